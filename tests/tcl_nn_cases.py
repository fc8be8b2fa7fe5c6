"""Bad-call cases of the transformer/CNN module commands and of the training
loop commands, in the table format of test_tcl_commands.BAD (which adds them
to its own): (command, a good call, [(bad call, -errorcode prefix, text in the
message)]). The Tcl variables of test_tcl_commands.SETUP are set."""
from __future__ import annotations

HANDLE = ("TORCH", "HANDLE")
VALUE = ("TORCH", "VALUE")
WRONGARGS = ("TCL", "WRONGARGS")
LIBTORCH = ("TORCH", "LIBTORCH")


def lookup(opt):
    return ("TCL", "LOOKUP", "INDEX", "option", opt)


BAD = [
    ("torch::embedding", "torch::embedding 10 4", [
        ("torch::embedding 10 4 extra", WRONGARGS, "wrong # args"),
        ("torch::embedding 10", WRONGARGS, "missing required argument embedding_dim"),
        ("torch::embedding 0 4", VALUE + ("-numEmbeddings", "0"), "must be >= 1"),
        ("torch::embedding 10 x", VALUE + ("-embeddingDim", "x"), "must be an integer"),
        ("torch::embedding -numEmbeddings 3 -embeddingDim 2 -dtype int8",
         VALUE + ("-dtype", "int8"), "must be float32, float64, float16, or bfloat16"),
        ("torch::embedding -num 3 -dim 2", lookup("-dim"), "bad option"),
    ]),
    ("torch::layer_norm", "torch::layer_norm {3 4} 1e-6", [
        ("torch::layer_norm 4 1e-5 extra", WRONGARGS, "wrong # args"),
        ("torch::layer_norm", WRONGARGS, "missing required"),
        ("torch::layer_norm {}", VALUE + ("-normalizedShape",), "non-empty"),
        ("torch::layer_norm {4 0}", VALUE + ("-normalizedShape",), "integers >= 1"),
        ("torch::layer_norm 4 -1", VALUE + ("-eps", "-1"), "must be > 0"),
        ("torch::layer_norm -normalizedShape 4 -elementwiseAffine maybe",
         VALUE + ("-elementwiseAffine", "maybe"), "boolean"),
        ("torch::layer_norm -shape 4", lookup("-shape"), "bad option"),
    ]),
    ("torch::conv2d", "torch::conv2d 1 2 3", [
        ("torch::conv2d 1 2 3 1 0 1 extra", WRONGARGS, "wrong # args"),
        ("torch::conv2d 1 2", WRONGARGS, "missing required argument kernel_size"),
        ("torch::conv2d 0 2 3", VALUE + ("-inChannels", "0"), "must be >= 1"),
        ("torch::conv2d 1 2 {}", VALUE + ("-kernelSize",), "list of 2"),
        ("torch::conv2d 1 2 {2 x}", VALUE + ("-kernelSize",), "integer >= 1"),
        ("torch::conv2d 1 2 3 {1 0}", VALUE + ("-stride",), "integer >= 1"),
        ("torch::conv2d 1 2 3 1 -2", VALUE + ("-padding", "-2"), "integer >= 0"),
        ("torch::conv2d 1 2 3 1 0 perhaps", VALUE + ("-bias", "perhaps"), "boolean"),
        ("torch::forward [torch::conv2d 3 2 3] $t", LIBTORCH, ""),
        ("torch::conv2d -inChannels 1 -outChannels 2 -kernelSize 3 -groups 1",
         lookup("-groups"), "bad option"),
    ]),
    ("torch::max_pool2d", "torch::max_pool2d 2", [
        ("torch::max_pool2d 2 2 extra", WRONGARGS, "wrong # args"),
        ("torch::max_pool2d", WRONGARGS, "missing required"),
        ("torch::max_pool2d 0", VALUE + ("-kernelSize", "0"), "integer >= 1"),
        ("torch::max_pool2d 2 {1 2 3}", VALUE + ("-stride",), "list of 2"),
        ("torch::max_pool2d -kernelSize 2 -padding 1", lookup("-padding"), "bad option"),
    ]),
    ("torch::flatten", "torch::flatten", [
        ("torch::flatten 1 2 3", WRONGARGS, "wrong # args"),
        ("torch::flatten x", VALUE + ("-startDim", "x"), "must be an integer"),
        ("torch::flatten 0 y", VALUE + ("-endDim", "y"), "must be an integer"),
        ("torch::forward [torch::flatten 5] $t", LIBTORCH, ""),
        ("torch::flatten -dim 1", lookup("-dim"), "bad option"),
    ]),
    ("torch::transformer_encoder_layer", "torch::transformer_encoder_layer 8 2 16", [
        ("torch::transformer_encoder_layer 8 2 16 0.1 relu 0 0 extra", WRONGARGS,
         "wrong # args"),
        ("torch::transformer_encoder_layer 8", WRONGARGS, "missing required argument n_head"),
        ("torch::transformer_encoder_layer 10 3", VALUE + ("-nHead", "3"),
         "must divide -dModel (10)"),
        ("torch::transformer_encoder_layer 0 1", VALUE + ("-dModel", "0"), "must be >= 1"),
        ("torch::transformer_encoder_layer 8 2 0", VALUE + ("-dimFeedforward", "0"),
         "must be >= 1"),
        ("torch::transformer_encoder_layer 8 2 16 2", VALUE + ("-dropout", "2"), "in [0, 1]"),
        ("torch::transformer_encoder_layer 8 2 16 0.1 swish", VALUE + ("-activation", "swish"),
         "must be relu or gelu"),
        ("torch::transformer_encoder_layer 8 2 16 0.1 relu x", VALUE + ("-normFirst", "x"),
         "boolean"),
        ("torch::transformer_encoder_layer 8 2 16 0.1 relu 0 x", VALUE + ("-causal", "x"),
         "boolean"),
        ("torch::transformer_encoder_layer -dModel 8 -nHead 2 -layerNormEps 0",
         VALUE + ("-layerNormEps", "0"), "must be > 0"),
        ("torch::forward [torch::transformer_encoder_layer 8 2] $t", VALUE,
         "expected an input of shape (batch, sequence, 8)"),
        ("torch::transformer_encoder_layer -dModel 8 -nHead 2 -heads 2", lookup("-heads"),
         "bad option"),
    ]),
    ("torch::named_parameters", "torch::named_parameters $q", [
        ("torch::named_parameters $q extra", WRONGARGS, "wrong # args"),
        ("torch::named_parameters", WRONGARGS, "missing required"),
        ("torch::named_parameters $t", HANDLE, "not a module handle"),
        ("torch::named_parameters $dm", HANDLE, "no such handle"),
        ("torch::named_parameters -module $q -prefix x", lookup("-prefix"), "bad option"),
    ]),
    ("torch::clip_grad_norm", "torch::clip_grad_norm $q 1.0", [
        ("torch::clip_grad_norm $q 1.0 2 extra", WRONGARGS, "wrong # args"),
        ("torch::clip_grad_norm $q", WRONGARGS, "missing required argument max_norm"),
        ("torch::clip_grad_norm $q -1", VALUE + ("-maxNorm", "-1"), "must be >= 0"),
        ("torch::clip_grad_norm $q 1 0", VALUE + ("-normType", "0"), "must be > 0"),
        ("torch::clip_grad_norm $o 1", HANDLE, "not a tensor handle"),
        ("torch::clip_grad_norm [list $q $dt] 1", HANDLE, "no such handle"),
        ("torch::clip_grad_norm \"\\{\" 1", VALUE + ("-parameters",), "module handle"),
        ("torch::clip_grad_norm -parameters $q -limit 1", lookup("-limit"), "bad option"),
    ]),
    ("torch::softmax", "torch::softmax $t 1", [
        ("torch::softmax $t 1 extra", WRONGARGS, "wrong # args"),
        ("torch::softmax $t", WRONGARGS, "missing required argument dim"),
        ("torch::softmax $t x", VALUE + ("-dim", "x"), "must be an integer"),
        ("torch::softmax $t 4", LIBTORCH, "Dimension out of range"),
        ("torch::softmax $m 0", HANDLE, "not a tensor handle"),
        ("torch::softmax -input $t -axis 0", lookup("-axis"), "bad option"),
    ]),
    ("torch::multinomial", "torch::multinomial [torch::softmax $t 1] 2", [
        ("torch::multinomial $v 1 0 extra", WRONGARGS, "wrong # args"),
        ("torch::multinomial $v", WRONGARGS, "missing required argument num_samples"),
        ("torch::multinomial $v 0", VALUE + ("-numSamples", "0"), "must be >= 1"),
        ("torch::multinomial $v 1 maybe", VALUE + ("-replacement", "maybe"), "boolean"),
        ("torch::multinomial [torch::ones 3] 5", LIBTORCH, ""),
        ("torch::multinomial $dt 1", HANDLE, "no such handle"),
        ("torch::multinomial -input $v -count 1", lookup("-count"), "bad option"),
    ]),
    ("torch::cat", "torch::cat [list $t $t] 1", [
        ("torch::cat [list $t] 0 extra", WRONGARGS, "wrong # args"),
        ("torch::cat", WRONGARGS, "missing required"),
        ("torch::cat {}", VALUE + ("-tensors",), "non-empty list of tensor handles"),
        ("torch::cat [list $t $m]", HANDLE, "not a tensor handle"),
        ("torch::cat [list $t $v]", LIBTORCH, ""),
        ("torch::cat [list $t] x", VALUE + ("-dim", "x"), "must be an integer"),
        ("torch::cat -tensors [list $t] -axis 0", lookup("-axis"), "bad option"),
    ]),
    ("torch::randint", "torch::randint 0 5 {2 2}", [
        ("torch::randint 0 5 {2} int64 extra", WRONGARGS, "wrong # args"),
        ("torch::randint 0 5", WRONGARGS, "missing required argument shape"),
        ("torch::randint 3 3 {2}", VALUE + ("-high", "3"), "must be greater than -low (3)"),
        ("torch::randint 0 5 {x}", VALUE + ("-shape",), "non-negative integers"),
        ("torch::randint 0 5 {2} float32", VALUE + ("-dtype", "float32"), "must be int64"),
        ("torch::randint a 5 {2}", VALUE + ("-low", "a"), "must be an integer"),
        ("torch::randint -low 0 -high 2 -size 3", lookup("-size"), "bad option"),
    ]),
    ("torch::string_to_tensor", "torch::string_to_tensor abc", [
        ("torch::string_to_tensor abc char extra", WRONGARGS, "wrong # args"),
        ("torch::string_to_tensor", WRONGARGS, "missing required"),
        ("torch::string_to_tensor abc word", VALUE + ("-unit", "word"), "must be char or byte"),
        ("torch::string_to_tensor -string abc -encoding utf-8", lookup("-encoding"),
         "bad option"),
    ]),
    ("torch::tensor_to_string", "torch::tensor_to_string [torch::string_to_tensor abc]", [
        ("torch::tensor_to_string $i char extra", WRONGARGS, "wrong # args"),
        ("torch::tensor_to_string", WRONGARGS, "missing required"),
        ("torch::tensor_to_string $t", VALUE + ("-tensor",), "must be an integer tensor"),
        ("torch::tensor_to_string [torch::tensor_create {300} {} int64] byte",
         VALUE + ("-tensor",), "holds 300, which is not a byte (0 to 255)"),
        ("torch::tensor_to_string [torch::tensor_create {-1} {} int64]",
         VALUE + ("-tensor",), "not a character code"),
        ("torch::tensor_to_string $i bits", VALUE + ("-unit", "bits"), "must be char or byte"),
        ("torch::tensor_to_string $m", HANDLE, "not a tensor handle"),
        ("torch::tensor_to_string -tensor $i -encoding x", lookup("-encoding"), "bad option"),
    ]),
    ("torch::list_to_tensor", "torch::list_to_tensor {1 2 3}", [
        ("torch::list_to_tensor {1} int64 extra", WRONGARGS, "wrong # args"),
        ("torch::list_to_tensor", WRONGARGS, "missing required"),
        ("torch::list_to_tensor {1 x}", VALUE + ("-list", "x"), "must be a list of integers"),
        ("torch::list_to_tensor {1 2.5}", VALUE + ("-list", "2.5"), "list of integers"),
        ("torch::list_to_tensor {1 300} uint8", VALUE + ("-list", "300"),
         "must be integers in [0, 255] for uint8"),
        ("torch::list_to_tensor {1 y} float32", VALUE + ("-list", "y"), "list of numbers"),
        ("torch::list_to_tensor \"\\{\"", VALUE + ("-list",), "list of numbers"),
        ("torch::list_to_tensor {1} bool", VALUE + ("-dtype", "bool"), "must be int64"),
        ("torch::list_to_tensor -values {1}", lookup("-values"), "bad option"),
    ]),
]

COMMANDS = {cmd for cmd, _good, _bad in BAD}
