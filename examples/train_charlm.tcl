# A character-level GPT trained from Tcl with Adafactor: a decoder-only
# transformer (token and position embeddings, causal pre-norm encoder layers,
# a final layer norm, a linear head; about 0.8M parameters at the defaults)
# learns Tcl's own manual pages (examples/data/tcl_manual.txt, see
# tcl_manual.LICENSE), then writes a sample of text.
#
#   TCLLIBPATH=$(.venv/bin/python -m tcltorch tcl-path) tclsh examples/train_charlm.tcl ?-option value ...?
#
# Options (defaults in charlm::defaults below): -steps 250 -layers 4 -dModel 128
# -heads 4 -ff 512 -context 128 -batch 16 -lr 0.01 -warmup 25 -minLr 0.001 ...
# e.g. a quick run: tclsh examples/train_charlm.tcl -steps 60 -layers 2 -dModel 64
#
# Training: Adafactor with a fixed step size (no relative step, no parameter
# scale), the rate set before each step by a warm-up then cosine schedule
# computed here; gradients clipped to a norm of 1; weight decay on the weight
# matrices only, not on biases and normalisation weights (a parameter group
# of its own, through -groups). Each progress line shows the loss and the tokens
# per second; at the end, the validation loss against the unigram baseline
# (the loss of predicting each character by its training frequency), and a
# sample.
#
# The procs below can be sourced without running (set charlm::library 1
# first): the tests train the model step by step and compare with PyTorch.
# One process trains one model; a data-parallel run would shard the batch in
# charlm::batch and average the gradients before the optimizer steps in
# charlm::train_step.
package require torch

namespace eval charlm {
    variable defaults {
        steps 250 layers 4 dModel 128 heads 4 ff 512 context 128 batch 16
        dropout 0.0 lr 0.01 warmup 25 minLr 0.001 weightDecay 0.01 clip 1.0
        seed 0 log 10 valFraction 0.1 evalBatches 8 sample 400 temperature 0.8
        prompt "NAME\n" data ""
    }
    variable config
    variable here [file dirname [file normalize [info script]]]
}

# Options given as -name value pairs on top of the defaults.
proc charlm::configure {options} {
    variable defaults
    variable config $defaults
    foreach {name value} $options {
        set key [string range $name 1 end]
        if {[string index $name 0] ne "-" || ![dict exists $defaults $key]} {
            error "unknown option \"$name\": must be one of -[join [dict keys $defaults] {, -}]"
        }
        dict set config $key $value
    }
}

proc charlm::cfg {key} {
    variable config
    dict get $config $key
}

# ------------------------------------------------------------ data

# The text, its vocabulary (the distinct characters), and the text as token
# ids split into training and validation tensors.
proc charlm::load_data {} {
    variable here
    variable text
    variable chars
    variable decode
    variable train
    variable val
    set file [cfg data]
    if {$file eq ""} {set file [file join $here data tcl_manual.txt]}
    set f [open $file r]
    fconfigure $f -encoding utf-8
    set text [read $f]
    close $f
    set chars [lsort -unique [split $text ""]]
    # code -> id as a lookup tensor, id -> code as another: the text becomes
    # ids with two tensor operations, not a Tcl command per character.
    set codes {}
    foreach c $chars {lappend codes [scan $c %c]}
    set table [lrepeat [expr {[tcl::mathfunc::max {*}$codes] + 1}] 0]
    set id 0
    foreach code $codes {lset table $code $id; incr id}
    set table [torch::list_to_tensor $table]
    set decode [torch::list_to_tensor $codes]
    set raw [torch::string_to_tensor $text]
    set ids [torch::index_select $table 0 $raw]
    set n [string length $text]
    set nval [expr {int($n * [cfg valFraction])}]
    set train [torch::tensor_slice $ids 0 0 [expr {$n - $nval}]]
    set val [torch::tensor_slice $ids 0 [expr {$n - $nval}]]
    torch::delete $table $raw $ids
    return [llength $chars]
}

# The loss of predicting every validation character by its frequency in the
# training text (add-one smoothed): the bar a model must clear to have
# learned anything beyond character counts.
proc charlm::unigram_baseline {} {
    variable text
    variable chars
    set n [string length $text]
    set nval [expr {int($n * [cfg valFraction])}]
    set trainText [string range $text 0 [expr {$n - $nval - 1}]]
    set valText [string range $text [expr {$n - $nval}] end]
    set ntrain [string length $trainText]
    set v [llength $chars]
    set total 0.0
    foreach c $chars {
        # occurrences of c: the length lost when c is removed
        set inTrain [expr {$ntrain - [string length [string map [list $c ""] $trainText]]}]
        set inVal [expr {$nval - [string length [string map [list $c ""] $valText]]}]
        set p [expr {($inTrain + 1.0) / ($ntrain + $v)}]
        set total [expr {$total - $inVal * log($p)}]
    }
    expr {$total / $nval}
}

# 0 .. n-1 as an int64 tensor.
proc charlm::arange {n} {
    set l {}
    for {set i 0} {$i < $n} {incr i} {lappend l $i}
    torch::list_to_tensor $l
}

# A batch of random windows of the training ids: inputs {batch context} and
# the targets, the same windows shifted by one.
proc charlm::batch {} {
    variable train
    variable window
    set T [cfg context]
    set n [lindex [torch::tensor_shape $train] 0]
    set starts [torch::randint 0 [expr {$n - $T - 1}] [list [cfg batch] 1]]
    set index [torch::add $starts $window]
    set flat [torch::tensor_reshape $index {-1}]
    set rows [torch::index_select $train 0 $flat]
    set xy [torch::tensor_reshape $rows [list [cfg batch] [expr {$T + 1}]]]
    set x [torch::tensor_slice $xy 1 0 $T]
    set y [torch::tensor_slice $xy 1 1]
    # handles are names: x and y stay valid without these
    torch::delete $starts $index $flat $rows $xy
    list $x $y
}

# ------------------------------------------------------------ model

proc charlm::build {vocab} {
    variable tok
    variable pos
    variable blocks
    variable positions
    variable window
    set d [cfg dModel]
    set tok [torch::embedding $vocab $d]
    set pos [torch::embedding [cfg context] $d]
    set blocks [torch::sequential]
    for {set i 0} {$i < [cfg layers]} {incr i} {
        torch::add_module $blocks [torch::transformer_encoder_layer -dModel $d \
            -nHead [cfg heads] -dimFeedforward [cfg ff] -dropout [cfg dropout] \
            -activation gelu -normFirst 1 -causal 1]
    }
    torch::add_module $blocks [torch::layer_norm $d]
    torch::add_module $blocks [torch::linear $d $vocab]
    set positions [arange [cfg context]]
    set window [arange [expr {[cfg context] + 1}]]
}

# All parameters, named as the attributes of a PyTorch model would be
# (tok.weight, pos.weight, blocks.0.self_attn.in_proj_weight, ...).
proc charlm::named_parameters {} {
    variable tok
    variable pos
    variable blocks
    set all {}
    foreach {prefix module} [list tok $tok pos $pos blocks $blocks] {
        dict for {name p} [torch::named_parameters $module] {
            dict set all $prefix.$name $p
        }
    }
    return $all
}

# Logits {batch sequence vocab} of inputs {batch sequence}.
proc charlm::forward {x} {
    variable tok
    variable pos
    variable blocks
    variable positions
    set T [lindex [torch::tensor_shape $x] 1]
    set p [torch::tensor_slice $positions 0 0 $T]
    set te [torch::forward $tok $x]
    set pe [torch::forward $pos $p]
    set h [torch::add $te $pe]
    set logits [torch::forward $blocks $h]
    torch::delete $te $pe $h
    # a slice of the whole tensor may be the tensor itself, under its handle
    if {$p ne $positions} {torch::delete $p}
    return $logits
}

proc charlm::loss {x y} {
    set logits [forward $x]
    set flat [torch::tensor_reshape $logits [list -1 [lindex [torch::tensor_shape $logits] 2]]]
    set targets [torch::tensor_reshape $y {-1}]
    set loss [torch::cross_entropy_loss $flat $targets]
    torch::delete $logits $flat $targets
    return $loss
}

# ------------------------------------------------------------ training

# One Adafactor with two parameter groups: weight decay on the matrices (and
# embeddings), none on biases and layer-norm weights (the group of -groups).
proc charlm::make_optimizers {} {
    variable optimizers
    variable params
    set decay {}
    set plain {}
    dict for {name p} [named_parameters] {
        if {[llength [torch::tensor_shape $p]] >= 2} {lappend decay $p} else {lappend plain $p}
    }
    set params [concat $decay $plain]
    set optimizers [list [torch::optimizer_adafactor -parameters $params \
        -lr [cfg lr] -relativeStep 0 -scaleParameter 0 -clipThreshold 1.0 \
        -weightDecay [cfg weightDecay] -groups [list [list -parameters $plain -weightDecay 0.0]]]]
}

# Linear warm-up to -lr over -warmup steps, then a cosine down to -minLr at
# the last step. `step` counts from 1.
proc charlm::lr_at {step} {
    set lr [cfg lr]
    set warmup [cfg warmup]
    set steps [cfg steps]
    if {$step <= $warmup} {return [expr {$lr * $step / double($warmup)}]}
    set progress [expr {($step - $warmup) / double(max(1, $steps - $warmup))}]
    set min [cfg minLr]
    expr {$min + 0.5 * ($lr - $min) * (1 + cos(acos(-1) * $progress))}
}

# One optimizer step on a batch; returns {loss gradientNorm}.
proc charlm::train_step {x y lr} {
    variable optimizers
    variable params
    foreach opt $optimizers {
        torch::optimizer_lr $opt $lr
        torch::optimizer_zero_grad $opt
    }
    set loss [loss $x $y]
    torch::tensor_backward $loss
    set norm [torch::clip_grad_norm $params [cfg clip]]
    foreach opt $optimizers {torch::optimizer_step $opt}
    set value [torch::tensor_item $loss]
    torch::delete $loss
    list $value $norm
}

# Mean loss over the first -evalBatches batches of consecutive windows of the
# validation ids (the same windows every time), in evaluation mode.
proc charlm::validation_loss {} {
    variable val
    variable blocks
    set T [cfg context]
    set B [cfg batch]
    set n [lindex [torch::tensor_shape $val] 0]
    set windows [expr {min(($n - 1) / $T, $B * [cfg evalBatches])}]
    torch::eval $blocks
    set total 0.0
    for {set w 0} {$w < $windows} {incr w $B} {
        set rows [expr {min($B, $windows - $w)}]
        set x0 [torch::tensor_slice $val 0 [expr {$w * $T}] [expr {($w + $rows) * $T}]]
        set y0 [torch::tensor_slice $val 0 [expr {$w * $T + 1}] [expr {($w + $rows) * $T + 1}]]
        set x [torch::tensor_reshape $x0 [list $rows $T]]
        set y [torch::tensor_reshape $y0 [list $rows $T]]
        set loss [loss $x $y]
        set total [expr {$total + $rows * [torch::tensor_item $loss]}]
        torch::delete $x0 $y0 $x $y $loss
    }
    torch::train $blocks
    expr {$total / $windows}
}

# ------------------------------------------------------------ sampling

# Continues `prompt` by `count` characters, each drawn from the model's
# next-character distribution at the given temperature.
proc charlm::generate {prompt count temperature} {
    variable chars
    variable decode
    variable blocks
    torch::eval $blocks
    set ids {}
    foreach c [split $prompt ""] {
        set i [lsearch -exact -sorted $chars $c]
        lappend ids [expr {$i < 0 ? 0 : $i}]
    }
    set start [torch::list_to_tensor $ids]
    set context [torch::tensor_reshape $start {1 -1}]
    torch::delete $start
    set T [cfg context]
    for {set k 0} {$k < $count} {incr k} {
        set len [lindex [torch::tensor_shape $context] 1]
        set x [torch::tensor_slice $context 1 [expr {max(0, $len - $T)}]]
        set logits [forward $x]
        set last [torch::tensor_slice $logits 1 -1]
        set flat [torch::tensor_reshape $last {1 -1}]
        set scaled [torch::div $flat $temperature]
        set probs [torch::softmax $scaled -1]
        set next [torch::multinomial $probs 1]
        set longer [torch::cat [list $context $next] 1]
        torch::delete $x $logits $last $flat $scaled $probs $next $context
        set context $longer
    }
    set ids [torch::tensor_reshape $context {-1}]
    set codes [torch::index_select $decode 0 $ids]
    set text [torch::tensor_to_string $codes]
    torch::delete $context $ids $codes
    torch::train $blocks
    return $text
}

# ------------------------------------------------------------ main

proc charlm::setup {options} {
    configure $options
    torch::manual_seed [cfg seed]
    set vocab [load_data]
    build $vocab
    make_optimizers
    return $vocab
}

proc charlm::main {options} {
    variable train
    variable val
    set vocab [setup $options]
    set count 0
    dict for {name p} [named_parameters] {
        set count [expr {$count + [tcl::mathop::* {*}[torch::tensor_shape $p]]}]
    }
    set T [cfg context]
    set B [cfg batch]
    puts [format "char-LM: %d characters of vocabulary, %d training and %d validation tokens" \
              $vocab [lindex [torch::tensor_shape $train] 0] [lindex [torch::tensor_shape $val] 0]]
    puts [format "model: %d layers, dModel %d, %d heads, %d parameters; batch %d x %d tokens" \
              [cfg layers] [cfg dModel] [cfg heads] $count $B $T]
    set baseline [unigram_baseline]
    puts [format "unigram baseline loss %.4f" $baseline]
    set steps [cfg steps]
    set t0 [clock microseconds]
    set since $t0
    set sum 0.0
    set seen 0
    for {set step 1} {$step <= $steps} {incr step} {
        lassign [batch] x y
        set lr [lr_at $step]
        lassign [train_step $x $y $lr] loss norm
        torch::delete $x $y
        set sum [expr {$sum + $loss}]
        incr seen
        if {$step % [cfg log] == 0 || $step == $steps} {
            set now [clock microseconds]
            set rate [expr {$seen * $B * $T / (($now - $since) / 1e6)}]
            puts [format "step %4d/%d  loss %.4f  lr %.5f  grad norm %.3f  %.0f tokens/s" \
                      $step $steps [expr {$sum / $seen}] $lr $norm $rate]
            flush stdout
            set since $now
            set sum 0.0
            set seen 0
        }
    }
    set seconds [expr {([clock microseconds] - $t0) / 1e6}]
    set vloss [validation_loss]
    puts [format "validation loss %.4f (unigram baseline %.4f) after %d steps in %.1f s" \
              $vloss $baseline $steps $seconds]
    puts "sample:"
    puts [generate [subst -nocommands -novariables [cfg prompt]] [cfg sample] [cfg temperature]]
}

if {![info exists charlm::library]} {
    charlm::main $argv
}
