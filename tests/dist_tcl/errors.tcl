# Bad input, collectives before init, a peer that never arrives, and no
# thread or descriptor left behind by a group. One plain process.
#   tclsh errors.tcl port1 port2
package require torch
lassign $argv port1 port2
proc try_code {script} {
    set rc [catch {uplevel 1 $script} msg opts]
    if {!$rc} { return [list ok $msg] }
    return [list [dict get $opts -errorcode] $msg]
}
proc threads {} { llength [glob -nocomplain /proc/self/task/*] }
proc fds {} { llength [glob -nocomplain /proc/self/fd/*] }
# The counts once threads that were told to stop have gone (up to 5 s: a
# thread or socket left after that is a leak).
proc settled {expected} {
    for {set i 0} {$i < 50 && [list [threads] [fds]] ne $expected} {incr i} { after 100 }
    list [threads] [fds]
}
set t [torch::tensor_create {1.0 -2.0 3.0}]
foreach {name script} {
    all_reduce_before {torch::all_reduce $t}
    broadcast_before {torch::broadcast $t}
    all_gather_before {torch::all_gather $t}
    barrier_before {torch::barrier}
    rank_before {torch::distributed_rank}
    world_before {torch::distributed_world_size}
    ddp_before {torch::distributed_data_parallel [torch::linear 2 2]}
    shard_before {torch::optimizer_adafactor -parameters [torch::linear 2 2] -shardState 1}
    bad_rank {torch::distributed_init -rank 2 -worldSize 2 -masterPort 1234}
    negative_rank {torch::distributed_init -rank -1 -worldSize 2 -masterPort 1234}
    bad_world {torch::distributed_init -rank 0 -worldSize 0 -masterPort 1234}
    bad_port {torch::distributed_init -rank 0 -worldSize 1 -masterPort 70000}
    bad_backend {torch::distributed_init -backend nccl -rank 0 -worldSize 1}
    bad_timeout {torch::distributed_init -rank 0 -worldSize 1 -timeout 0}
    no_env {torch::distributed_init}
} {
    puts [list $name {*}[try_code $script]]
}
# A peer that never arrives: rank 1 of 2 with nobody hosting the store.
set start [clock milliseconds]
set r [try_code {torch::distributed_init -rank 1 -worldSize 2 -masterAddr 127.0.0.1 -masterPort $port1 -timeout 2}]
puts [list never_arrives {*}$r [expr {[clock milliseconds] - $start}]]

# A 1-rank group works, and a second init is refused.
proc cycle {port} {
    torch::distributed_init -rank 0 -worldSize 1 -masterAddr 127.0.0.1 -masterPort $port -timeout 30
    set t [torch::tensor_create {1.0 -2.0 3.0}]
    torch::all_reduce $t -op max
    torch::barrier
    set g [torch::all_gather $t]
    set r [list [torch::tensor_to_list $t] [torch::tensor_shape $g] [torch::distributed_rank] \
              [torch::distributed_world_size]]
    torch::distributed_destroy
    return $r
}
puts [list one_rank {*}[cycle $port1]]
torch::distributed_init -rank 0 -worldSize 1 -masterAddr 127.0.0.1 -masterPort $port2 -timeout 30
puts [list second_init {*}[try_code {torch::distributed_init -rank 0 -worldSize 1 -masterPort $port1}]]
puts [list bad_op {*}[try_code {torch::all_reduce $t -op prod}]]
puts [list bad_src {*}[try_code {torch::broadcast $t -src 1}]]
puts [list avg_int {*}[try_code {torch::all_reduce [torch::tensor_create {1 2} {} int64] -op avg}]]
torch::distributed_destroy
puts [list after_destroy {*}[try_code {torch::all_reduce $t}]]
puts [list destroy_twice {*}[try_code {torch::distributed_destroy}]]

# Leaks: the same counts after each of several cycles, through destroy and
# through deleting an interpreter.
set before [list [threads] [fds]]
for {set i 0} {$i < 3} {incr i} { cycle $port2 }
set after_destroy [settled $before]
for {set i 0} {$i < 3} {incr i} {
    set child [interp create]
    $child eval [list set auto_path $auto_path]
    $child eval [list set port $port2]
    $child eval {
        package require torch
        torch::distributed_init -rank 0 -worldSize 1 -masterAddr 127.0.0.1 -masterPort $port -timeout 30
        set ddp [torch::distributed_data_parallel [torch::linear 3 2]]
        torch::all_reduce [torch::tensor_create {1.0 2.0}]
    }
    interp delete $child
}
set after_delete [settled $before]
puts [list leaks $before $after_destroy $after_delete]
