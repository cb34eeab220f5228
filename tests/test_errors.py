"""Every kind of mistake a user makes gives a DlcError that names the place (1-based line and column of
the offending token) and says what was expected, in the language's words."""

from __future__ import annotations

import pytest

from dlc.compile import compile_spec
from dlc.errors import DlcError


def error(text: str, file: str = "test.dlc") -> DlcError:
    with pytest.raises(DlcError) as e:
        compile_spec(text, file)
    return e.value


def at(err: DlcError) -> tuple[int, int]:
    return err.pos.line, err.pos.col


# --- words ---------------------------------------------------------------------------------------

def test_unknown_kind_suggests_the_nearest():
    e = error("input 3@32x32\ncnv 64@3x3")
    assert e.message == "unknown layer kind `cnv` (did you mean `conv`?)" and at(e) == (2, 1)


def test_unknown_option_suggests_and_lists_the_valid_ones():
    e = error("input 3@32x32\nconv 64@3x3 pda=1")
    assert "unknown option `pda=` (did you mean `pad`?)" in e.message
    assert "conv takes pad, dil, groups, bias" in e.message and at(e) == (2, 13)


def test_option_of_a_kind_without_options():
    e = error("input 3@32x32\nrelu alpha=2")
    assert "unknown option `alpha=`" in e.message and "relu takes no options" in e.message and at(e) == (2, 6)


def test_unknown_bare_word_is_neither_a_kind_nor_a_flag():
    e = error("input 3@32x32\nmaxpool 2 ceel")
    assert e.message == "`ceel` is neither a layer kind nor a flag of maxpool (ceil) (did you mean `ceil`?)"
    assert at(e) == (2, 11)


def test_a_kind_that_needs_a_size_cannot_be_a_suffix():
    e = error("input 3@32x32\nconv 8@3x3 fc")
    assert "`fc` needs a size, so it starts its own step" in e.message and at(e) == (2, 12)


# --- sizes ---------------------------------------------------------------------------------------

def test_size_where_none_is_allowed():
    e = error("input 3@32x32\nrelu 64")
    assert e.message == "relu takes no size (received `64`)" and at(e) == (2, 6)


def test_missing_size():
    e = error("input 3@32x32\nconv relu")
    assert e.message == "expected a size like 64@3x3 after `conv`" and at(e) == (2, 5)
    e = error("input 3@32x32\nfc")
    assert e.message == "expected a size like 64 after `fc`" and at(e) == (2, 3)


def test_size_of_the_wrong_form():
    e = error("input 3@32x32\nmaxpool 64@3x3")
    assert "maxpool takes a size like 3x3/2 or 2, not `64@3x3`" in e.message and at(e) == (2, 9)
    e = error("input 3@32x32\nconv 3x3")
    assert "conv takes a size like 64@3x3, not `3x3`: write channels@kernel" == e.message
    e = error("input 3@32x32\nfc 10.5")
    assert "fc takes a whole number (received `10.5`)" == e.message and at(e) == (2, 4)


def test_zero_stride_and_kernel_are_refused():
    e = error("input 3@32x32\nconv 8@3x3/0")
    assert "the stride must be a whole number of at least 1 (received `0`)" == e.message and at(e) == (2, 12)
    e = error("input 3@32x32\nmaxpool 0x2")
    assert "sizes must be at least 1 (received `0x2`)" == e.message and at(e) == (2, 9)


def test_missing_arrow_before_a_size_after_a_flag():
    e = error("input 3@32x32\nconv 64@3x3 relu 128")
    assert e.message == "expected `->` or a new line before `128`" and at(e) == (2, 18)
    e = error("input 3@32x32\nmaxpool 3/2 ceil 2")
    assert e.message == "expected `->` or a new line before `2`" and at(e) == (2, 18)


# --- shapes --------------------------------------------------------------------------------------

def test_kernel_larger_than_the_padded_input_names_the_layer_and_the_shapes():
    # 32 -> (32-5)//4+1 = 7, padded to 9 < 11
    e = error("input 3@32x32\nconv 8@5x5/4 relu\nconv 8@11x11 pad=1", file="net.dlc")
    assert e.message.startswith("conv 8@11x11 (conv2) does not fit its input 8@7x7: ")
    assert "larger than the padded input height 9" in e.message and at(e) == (3, 1)
    assert str(e).startswith("net.dlc:3:1: conv 8@11x11 (conv2)")


def test_a_window_that_fits_exactly_is_fine():
    assert compile_spec("input 3@7x7\nconv 8@9x9 pad=1").output.out_shape == (8, 1, 1)


def test_add_of_unequal_shapes_names_both():
    e = error("input 4@8x8\nrelu as a\nconv 4@3x3\nadd a")
    assert e.message == "add (add1): add needs equal shapes, got 4@6x6 and 4@8x8" and at(e) == (4, 1)
    e = error("input 4@8x8\nadd(conv 4@3x3/2 pad=1 | conv 4@3x3 pad=1)")
    assert "add needs equal shapes, got 4@4x4 and 4@8x8" in e.message and at(e) == (2, 1)


def test_concat_of_unequal_spatial_sizes_names_both():
    e = error("input 1@64x64\nconv 16@3x3 pad=1 as e1 -> maxpool 2\nconcat e1")
    assert e.message == "concat (concat1): concat needs equal spatial sizes, got 16@32x32 and 16@64x64"
    assert at(e) == (3, 1)


def test_fc_on_token_ids_and_embed_on_features():
    e = error("input seq 20\nfc 4096")
    assert e.message == "fc 4096 cannot read token ids: put `embed D vocab=V` after `input seq 20`"
    assert at(e) == (2, 1)
    e = error("input 3@8x8\nembed 8 vocab=10")
    assert "embed 8 reads token ids, which only `input seq T` gives" in e.message and at(e) == (2, 1)


def test_required_option_without_a_default():
    e = error("input seq 20\nembed 8")
    assert e.message == "embed 8 needs the option vocab=… (it has no default)"


def test_shape_errors_inside_a_block_say_which_call():
    e = error("input 3@8x8\nblock b(k) {\n  conv 4@k\n}\nb(3) -> b(9)")
    assert at(e) == (3, 3)
    assert e.message.startswith("conv 4@k (b2.conv1) does not fit its input 4@6x6")
    assert e.message.endswith("(in b(9), line 5)")


def test_shortcut_that_cannot_be_projected():
    e = error("input 3@32x32\nadd(conv 8@3x3 | shortcut)")
    assert e.message == "shortcut cannot project 3@32x32 to 8@30x30 with a strided 1x1 convolution"
    assert at(e) == (2, 18)
    e = error("input 3@32x32\nconcat(conv 8@3x3 | shortcut)")
    assert "`shortcut` is a branch of add( … ), not of concat" == e.message


# --- labels and merges ---------------------------------------------------------------------------

def test_unknown_label():
    e = error("input 3@8x8\nconv 8@3x3 as skip\nadd skp")
    assert e.message == "unknown label `skp` (did you mean `skip`?) (labels so far: skip)" and at(e) == (3, 5)
    e = error("input 3@8x8\nconcat e1")
    assert "unknown label `e1` (no step before this one has `as LABEL`)" == e.message


def test_merge_with_one_branch_or_nothing():
    assert error("input 4\nadd(relu)").message == "add( … ) needs two or more branches separated by `|`"
    e = error("input 4\nconcat")
    assert e.message.startswith("`concat` needs what to merge") and at(e) == (2, 1)


def test_stray_bar_and_empty_branch():
    e = error("input 4\nrelu | relu")
    assert e.message == "`|` separates branches, only inside add( … ) or concat( … )" and at(e) == (2, 6)
    e = error("input 4\nadd(relu | )")
    assert e.message.startswith("empty branch") and at(e) == (2, 12)


# --- blocks --------------------------------------------------------------------------------------

BLOCK = "block stage(c, n=1) {\n  conv c@3x3 pad=1 x n\n}\ninput 3@8x8\n"


def test_too_many_block_arguments():
    e = error(BLOCK + "stage(8, 2, 3)")
    assert e.message == "block stage(c, n) takes 2 arguments, got 3" and at(e) == (5, 13)


def test_missing_block_argument():
    e = error(BLOCK + "stage(n=2)")
    assert e.message == "this call of stage(c, n) is missing the argument `c`" and at(e) == (5, 1)


def test_unknown_and_repeated_keyword_arguments():
    e = error(BLOCK + "stage(8, nn=2)")
    assert e.message == "block stage(c, n) has no parameter `nn` (did you mean `n`?)" and at(e) == (5, 10)
    e = error(BLOCK + "stage(8, c=2)")
    assert e.message == "`c` is given twice in this call of stage(c, n)" and at(e) == (5, 10)
    e = error(BLOCK + "stage(c=8, 2)")
    assert e.message == "positional arguments come before name=value ones" and at(e) == (5, 12)


def test_unknown_block_and_kind_called_like_a_block():
    e = error(BLOCK + "stag(8)")
    assert e.message == "unknown block `stag` (did you mean `stage`?)" and at(e) == (5, 1)
    e = error(BLOCK + "conv(8)")
    assert "`conv` is a layer kind, not a block" in e.message


def test_block_call_arguments_stay_on_one_line():
    e = error(BLOCK + "stage(8,\n 2)")
    assert e.message == "a call's arguments stay on one line: expected `,` or `)`" and at(e) == (5, 9)


def test_unbound_parameter_in_a_block_body():
    e = error("block b(c) {\n  conv c@3x3 relu x n\n}\ninput 3@8x8\nb(4)")
    assert e.message == ("a repeat count is a whole number of at least 1; block `b` has no parameter `n` "
                         "(received x n) (in b(4), line 5)")
    assert at(e) == (2, 21)


def test_recursive_blocks():
    e = error("block f(a) {\n  relu -> f(a)\n}\ninput 4\nf(1)")
    assert e.message.startswith("block `f` calls itself (f -> f); blocks cannot be recursive") and at(e) == (2, 11)
    e = error("block f(a) {\n  g(a)\n}\nblock g(a) {\n  f(a)\n}\ninput 4\nf(1)")
    assert e.message.startswith("block `f` calls itself (f -> g -> f)") and at(e) == (5, 3)


def test_block_defined_twice_or_named_like_a_kind():
    e = error("block f() { relu }\nblock f() { tanh }\ninput 4 -> f()")
    assert e.message == "block `f` is defined twice (first on line 1)" and at(e) == (2, 7)
    e = error("block relu() { tanh }\ninput 4 -> relu()")
    assert e.message == "`relu` is a layer kind; give the block another name"


# --- input ---------------------------------------------------------------------------------------

def test_no_input():
    e = error("conv 64@3x3")
    assert e.message.startswith("the network has no `input`") and at(e) == (1, 1)


def test_two_inputs_are_named():
    e = error("input 3@32x32\ninput 3@32x32\nconv 3@3x3")
    assert e.message == "a network with 2 inputs names each: write `input 3@32x32 as NAME`" and at(e) == (1, 1)
    e = error("input 3 as a\ninput 3 as b\nfc 2")
    assert e.message.startswith("input `a` is never read: a later step reads it by its label") and at(e) == (1, 1)
    e = error("input 3 as a\ninput 3 as relu2\nadd a")
    assert e.message == "`relu2` cannot name an input: the layers of kind relu are named so" and at(e) == (2, 12)
    e = error("input 3 as a\ninput 3 as a\nadd a")
    assert e.message.startswith("label `a` is used twice (first on line 1)") and at(e) == (2, 12)


def test_input_not_first():
    e = error("relu\ninput 3@32x32")
    assert e.message == "`input` must come before the first step (line 1)" and at(e) == (2, 1)


def test_bad_input_shapes():
    e = error("input 28x28 -> relu")
    assert e.message == "an image input is written C@HxW, like 1@28x28 (received `28x28`)" and at(e) == (1, 7)
    e = error("input foo")
    assert e.message.startswith("expected an input shape") and at(e) == (1, 10)


def test_empty_network():
    e = error("")
    assert e.message.startswith("the spec is empty") and at(e) == (1, 1)
    e = error("# only a comment\n\n")
    assert e.message.startswith("the spec is empty")
    e = error("input 784\n")
    assert e.message == "the network has no layers after `input 784`" and at(e) == (1, 1)


# --- reserved names and values -------------------------------------------------------------------

def test_reserved_repeat_names():
    e = error("input 4\nrelu as x3")
    assert e.message == "`x3` cannot name a label: names like x3 are reserved for repetition" and at(e) == (2, 9)
    e = error("block x2() { relu }\ninput 4 -> x2()")
    assert e.message == "`x2` cannot name a block: names like x3 are reserved for repetition" and at(e) == (1, 7)
    e = error("block f(x12) { relu }\ninput 4 -> f(1)")
    assert e.message == "`x12` cannot name a parameter: names like x3 are reserved for repetition"


def test_bad_option_values_quote_the_value():
    e = error("input 3@8x8\nconv 8@3x3 pad=foo")
    assert e.message == "pad takes a whole number, one per axis like 1x3x3, `same` or `valid`; no block parameter `foo` (received pad=foo)"
    assert at(e) == (2, 16)
    e = error("input 3@8x8\nconv 8@3x3 bias=2")
    assert e.message == "bias takes on or off (received bias=2)" and at(e) == (2, 17)
    e = error("input 3@8x8\nconv 8@3x3 groups=1.5")
    assert e.message == "groups takes a whole number (received groups=1.5)"
    e = error("input 3@8x8\nbn eps=small")
    assert "eps takes a number" in e.message and "(received eps=small)" in e.message


def test_bad_repeat_count():
    e = error("input 4\nrelu x0")
    assert e.message == "a repeat count is a whole number of at least 1 (received x0)" and at(e) == (2, 6)
    e = error("input 4\nrelu x")
    assert e.message.startswith("expected a repeat count after `x`") and at(e) == (2, 7)


def test_train_settings():
    e = error("input 2 -> fc 1\ntrain lr=0.1 lr=0.2")
    assert e.message == "`lr` is set twice" and at(e) == (2, 14)
    e = error("input 2 -> fc 1\ntrain batch=3x3")
    assert e.message == "a training setting is a number or a word (received batch=3x3)" and at(e) == (2, 13)
    e = error("train lr=0.1\ninput 2 -> fc 1\ntrain epochs=3")
    assert e.message == "a second `train` statement: put every setting on one" and at(e) == (3, 1)


# --- syntax --------------------------------------------------------------------------------------

def test_unclosed_and_unmatched_brackets():
    e = error("input 4\nadd(relu\n | identity\n")
    assert e.message == "unclosed `(`" and at(e) == (2, 4)
    e = error("block b() {\n  relu\ninput 4")
    assert e.message == "unclosed `{`" and at(e) == (1, 11)
    e = error("input 4\nrelu)")
    assert e.message == "`)` without a matching `(`" and at(e) == (2, 5)


def test_absurdly_deep_nesting_is_an_error_not_a_crash():
    assert error("input 4\n" + "(" * 2000 + "relu" + ")" * 2000).message == "brackets are nested too deeply"


def test_expected_things_after_operators():
    assert error("input 4\nbn eps=").message == "expected a value after `eps=`"
    assert error("input 4\nrelu as").message == "expected a label name after `as`"
    e = error("input 3@8x8\nconv 8@")
    assert e.message == "expected a kernel or map size after `@`, like 64@3x3"
    e = error("input 3@8x8\nmaxpool 2/")
    assert e.message == "expected a stride after `/`, like 3x3/2"
    e = error("input 3@8x8\nconv @3x3")
    assert e.message == "expected a size like 64@3x3 after `conv`" and at(e) == (2, 6)


def test_unreadable_tokens():
    e = error("input 3@8x8\nconv 8@3x3x")
    assert e.message.startswith("cannot read `3x3x`") and at(e) == (2, 8)
    e = error("input 3@8x8\nrelu $")
    assert e.message == "unexpected character `$`" and at(e) == (2, 6)


def test_a_kernel_with_another_number_of_axes_than_its_input_is_located_and_names_both():
    # issue 28: 3x3x3 is a 3-D kernel, read as one token; on an image it is a mistake, not a guess
    e = error("input 3@8x8\nconv 8@3x3x3")
    assert e.message == ("the kernel 3x3x3 has 3 axes but the input 3@8x8 has 2: write one number for every "
                         "axis, or 2 like 3x3") and at(e) == (2, 8)
    e = error("input 3@16x112x112\nconv 64@3x7x7/1x2 pad=1x3x3")
    assert e.message.startswith("the stride 1x2 has 2 axes but the input 3@16x112x112 has 3") and at(e) == (2, 15)
    e = error("input 3@16x112x112\nconv 64@3 pad=1x3")
    assert e.message.startswith("pad=1x3 has 2 axes but the input 16x112x112 has 3") and at(e) == (2, 15)
    e = error("input 1@8000\nmaxpool 2x2")
    assert e.message.startswith("the window 2x2 has 2 axes but the input 1@8000 has 1") and at(e) == (2, 9)
    e = error("input 3@4x4x4x4")
    assert e.message.startswith("an input has 1 to 3 spatial axes") and at(e) == (1, 7)


def test_statements_in_the_wrong_place():
    e = error("input 4\n(block b() { relu })")
    assert e.message.startswith("blocks are defined at the top level") and at(e) == (2, 2)
    e = error("input 4\nadd(relu | train lr=1)")
    assert e.message.startswith("`train` is a top-level statement")
    e = error("input 4\n(input 4)")
    assert e.message.startswith("`input` is the first statement")


def test_error_text_shows_file_line_column_and_a_caret():
    e = error("input 3@32x32\nconv 64@3x3 relu 128", file="alexnet.dlc")
    assert str(e) == ("alexnet.dlc:2:18: expected `->` or a new line before `128`\n"
                      "    conv 64@3x3 relu 128\n"
                      "                     ^^^")


# --- values refused where they are written (issue 9) ---------------------------------------------

def test_out_of_range_option_values_point_at_the_value():
    e = error("input 3@8x8\nconv 4@3x3 dil=0")
    assert e.message == "dil must be >= 1 (received dil=0)" and at(e) == (2, 16)
    e = error("input 3@8x8\nlrn beta=-1")
    assert e.message == "lrn beta must be > 0 (received beta=-1.0)" and at(e) == (2, 10)
    e = error("input 3@8x8\nbn eps=-1")
    assert e.message == "bn eps must be > 0 (received eps=-1.0)" and at(e) == (2, 8)
    e = error("input 4\ndropout 1.5")  # the caret under 1.5, not under `dropout`
    assert e.message == "dropout probability must satisfy 0 <= P < 1 (received 1.5)" and at(e) == (2, 9)
    e = error("input 4\nfc 0")
    assert at(e) == (2, 4)
    e = error("input 3@8x8\nconv 4@3x3 groups=2")  # 3 input channels: the groups value is the fault
    assert e.message.startswith("groups=2 must divide") and at(e) == (2, 19)
    e = error("input seq 4 of 8\nattention 2 dropout=1.5")
    assert e.message == "attention dropout must satisfy 0 <= P < 1 (received dropout=1.5)" and at(e) == (2, 21)
    e = error("input seq 4 of 8\nlayernorm eps=-1")
    assert e.message == "layernorm eps must be > 0 (received eps=-1.0)" and at(e) == (2, 15)


def test_a_value_from_a_default_statement_is_located_at_the_step():
    e = error("input 3@8x8\ndefault bn eps=-1\nbn")
    assert e.message == "bn (bn1): bn eps must be > 0 (received eps=-1.0)" and at(e) == (3, 1)


def test_the_same_label_option_or_flag_twice():
    e = error("input 3@8x8\nrelu as a\nrelu as a\nadd a")  # `add a` would add a layer to itself
    assert e.message.startswith("label `a` is used twice (first on line 2)") and at(e) == (3, 9)
    e = error("input 3@8x8\nconv 4@3x3 pad=1 pad=2")
    assert e.message == "`pad=` is given twice for conv; keep one" and at(e) == (2, 18)
    e = error("input 3@8x8\nmaxpool 2 ceil ceil")
    assert e.message == "the flag `ceil` is given twice for maxpool; keep one" and at(e) == (2, 16)
    e = error("input 3@8x8\ndefault conv pad=1 pad=2\nconv 4@3x3")
    assert e.message == "`pad=` is given twice for conv; keep one" and at(e) == (2, 20)


def test_digits_are_ascii():
    e = error("input 4\nfc \u0663")  # Arabic-Indic three: int() reads it as 3
    assert e.message.startswith("`\u0663` is not one of the digits 0-9") and at(e) == (2, 4)
    e = error("input \uff11\uff10 -> relu")  # full-width 10
    assert e.message.startswith("`\uff11` is not one of the digits 0-9") and at(e) == (1, 7)


def test_numbers_too_large_for_any_size():
    for digits in (400, 4301):  # past 4,300 digits Python will not even convert the text
        e = error("input 4\nfc " + "1" * digits)
        assert "is too large: sizes, counts and options are at most 9,223,372,036,854,775,807" in e.message
        assert at(e) == (2, 4)
    e = error("input 4\ndropout 1e999")
    assert "too large for a number" in e.message and at(e) == (2, 9)
    assert compile_spec("input 4 -> fc 9223372036854775807").output.out_shape == (2**63 - 1,)


def test_an_input_takes_no_repeat():
    e = error("input 10 x2")
    assert e.message == "an input takes no repeat: write one `input ... as LABEL` line per input" and at(e) == (1, 10)


def test_a_layer_kind_where_a_flag_stands_is_the_fault():
    e = error("input 4\nfc 100 relu fc 10")
    assert e.message == "`fc` is a layer kind, not a flag: missing `->` before `fc`?" and at(e) == (2, 13)


def test_deeply_chained_block_calls_are_not_called_brackets():
    n = 500  # each block calls the one before it
    text = "block b0() { relu }\n" + "".join(f"block b{i}() {{ b{i - 1}() }}\n" for i in range(1, n))
    e = error(text + f"input 4 -> b{n - 1}()")
    assert e.message.startswith("block calls nest more than 100 deep here (b499 -> b498 -> b497 -> …")
    assert "(in " not in e.message and at(e) == (401, 16)


def test_training_settings_are_never_negative():
    e = error("input 2 -> fc 1\ntrain seed=-1")
    assert e.message == "training settings are never negative (received seed=-1)" and at(e) == (2, 12)
