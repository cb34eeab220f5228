"""Every layer kind on a tiny spec: output shape, parameters, MACs, FLOPs and receptive field.

Each expected figure is worked out by hand in the comment beside it from conventions.md's formulas
(shapes: floor((in + pads - dil*(k-1) - 1) / stride) + 1; conv MACs C_out*H_out*W_out*(C_in/groups)*kh*kw;
FLOPs 2*MACs + bias adds + the per-kind elementwise rules), the way the course notes state them.
Tests are named test_<kind>_...; the last test checks that no registered kind is left without one.
"""

from __future__ import annotations

import math

import pytest

from dlc.analysis import analyse
from dlc.compile import compile_spec
from dlc.errors import DlcError
from dlc.layers import KINDS, Role


def analysed(spec: str):
    return analyse(compile_spec(spec, file="<test>"))


def last(spec: str, kind: str | None = None):
    """Figures of the spec's last node, or of its last node of `kind`."""
    stats = analysed(spec).nodes
    if kind is not None:
        stats = [s for s in stats if s.node.kind == kind]
    return stats[-1]


def figures(s) -> tuple:
    """(output shape, params, non-trainable, MACs, FLOPs) of one node."""
    return s.node.out_shape, s.params, s.non_trainable, s.macs, s.flops


def rf(s) -> tuple[int, int, int]:
    """(field height, field width, jump) of one node; both axes share the jump in these tests."""
    assert s.rf.jump[0] == s.rf.jump[1]
    return s.rf.size[0], s.rf.size[1], s.rf.jump[0]


def fails(spec: str, line: int, *words: str):
    with pytest.raises(DlcError) as err:
        compile_spec(spec, file="<test>")
    assert err.value.pos is not None and err.value.pos.line == line, str(err.value)
    for w in words:
        assert w in err.value.message, err.value.message


# --- conv ---------------------------------------------------------------------------------------

def test_conv_alexnet_conv1_as_in_the_course_table():
    # AlexNet conv1 on 3@227x227 gives 96@55x55: (227 - 11)/4 + 1 = 55. Params 96*3*11*11 + 96 = 34,944;
    # MACs 96*55*55 * 3*11*11 = 105,415,200; FLOPs 2*MACs + one bias add per output (96*55*55 = 290,400).
    s = last("input 3@227x227\nconv 96@11x11/4")
    assert figures(s) == ((96, 55, 55), 34_944, 0, 105_415_200, 211_120_800)
    assert rf(s) == (11, 11, 4)


def test_conv_stride_and_padding_resnet_stem():
    # ResNet's conv1 on 3@224x224: floor((224 + 3 + 3 - 7)/2) + 1 = 112. No bias: 64*3*7*7 = 9,408 params;
    # MACs 64*112*112 * 3*7*7 = 118,013,952; FLOPs 2*MACs, nothing for a bias.
    s = last("input 3@224x224\nconv 64@7x7/2 pad=3 bias=off")
    assert figures(s) == ((64, 112, 112), 9_408, 0, 118_013_952, 236_027_904)
    assert s.node.attrs["pads"] == (3, 3, 3, 3)


def test_conv_pad_same_odd_input_pads_both_sides_equally():
    # 7 wide, 3x3/2: out = ceil(7/2) = 4; total padding (4-1)*2 + 3 - 7 = 2, one pixel each side.
    s = last("input 1@7x7\nconv 4@3x3/2 pad=same")
    assert s.node.out_shape == (4, 4, 4)
    assert s.node.attrs["pads"] == (1, 1, 1, 1)


def test_conv_pad_same_even_input_puts_the_extra_pixel_at_the_end():
    # 8 wide, 3x3/2: out = ceil(8/2) = 4; total padding (4-1)*2 + 3 - 8 = 1, all of it bottom and right
    # (TensorFlow's and ONNX SAME_UPPER's choice). Pads are (top, left, bottom, right).
    s = last("input 1@8x8\nconv 4@3x3/2 pad=same")
    assert s.node.out_shape == (4, 4, 4)
    assert s.node.attrs["pads"] == (0, 0, 1, 1)


def test_conv_pad_same_even_kernel_at_stride_1():
    # 4x4 kernel at stride 1 on 5x5: out 5, total padding 4 - 1 = 3, split 1 before and 2 after.
    s = last("input 1@5x5\nconv 2@4x4 pad=same")
    assert s.node.out_shape == (2, 5, 5)
    assert s.node.attrs["pads"] == (1, 1, 2, 2)
    # MACs 2*5*5 * 1*4*4 = 800 whatever the padding: every output reads the whole window.
    assert s.macs == 800


def test_conv_pad_valid_is_no_padding():
    s = last("input 1@5x5\nconv 1@3x3 pad=valid")
    assert s.node.out_shape == (1, 3, 3) and s.node.attrs["pads"] == (0, 0, 0, 0)


def test_conv_dilation_widens_the_window():
    # 3x3 at dil=2 spans 2*(3-1) + 1 = 5 pixels: 9 - 5 + 1 = 5. Params 2*1*9 + 2 = 20; MACs 2*5*5*9 = 450;
    # FLOPs 900 + 50 bias adds. The field is the span: 1 + 2*(3-1)*1 = 5.
    s = last("input 1@9x9\nconv 2@3x3 dil=2")
    assert figures(s) == ((2, 5, 5), 20, 0, 450, 950)
    assert rf(s) == (5, 5, 1)


def test_conv_dilation_with_pad_same():
    # out = ceil(9/1) = 9; total padding 8 + 2*(3-1) + 1 - 9 = 4, two each side.
    s = last("input 1@9x9\nconv 1@3x3 dil=2 pad=same")
    assert s.node.out_shape == (1, 9, 9) and s.node.attrs["pads"] == (2, 2, 2, 2)


def test_conv_groups_divide_the_input_channels():
    # 4 groups of 32/4 = 8 input channels: params 64*8*3*3 + 64 = 4,672; MACs 64*8*8 * 8*3*3 = 294,912;
    # FLOPs 2*294,912 + 64*8*8 = 593,920.
    s = last("input 32@8x8\nconv 64@3x3 pad=1 groups=4")
    assert figures(s) == ((64, 8, 8), 4_672, 0, 294_912, 593_920)


def test_conv_rectangular_kernel():
    # 1x7 (height x width) on 10x10: height 10 - 1 + 1 = 10, width 10 - 7 + 1 = 4; params 8*1*1*7 + 8 = 64.
    s = last("input 1@10x10\nconv 8@1x7")
    assert s.node.out_shape == (8, 10, 4) and s.params == 64
    assert rf(s) == (1, 7, 1)


def test_conv_window_larger_than_the_padded_input_is_an_error():
    fails("input 1@4x4\nconv 8@5x5\n", 2, "larger")


def test_conv_groups_must_divide_the_channels():
    fails("input 6@8x8\nconv 8@3x3 groups=4\n", 2, "groups")


# --- dwconv -------------------------------------------------------------------------------------

def test_conv_on_a_signal_one_number_is_a_1d_kernel():
    # issue 28: on 1@8000 (C@L) `conv 16@3` is a 1-D conv of width 3 (PyTorch's Conv1d). With pad=same at
    # stride 2: out ceil(8000/2) = 4000, total padding (4000-1)*2 + 3 - 8000 = 1, at the end.
    # Params 16*1*3 + 16 = 64; MACs 16*4000 * 1*3 = 192,000; FLOPs 2*MACs + 64,000 bias adds.
    s = last("input 1@8000\nconv 16@3/2 pad=same")
    assert figures(s) == ((16, 4000), 64, 0, 192_000, 448_000)
    assert s.node.attrs["kernel"] == (3,) and s.node.attrs["pads"] == (0, 1)
    assert s.rf.size == (3,) and s.rf.jump == (2,)
    assert type(s.node.out_shape).__name__ == "Signal"  # C@L, not a sequence of 16 steps


def test_conv_on_a_volume_r3d_stem():
    # torchvision's r3d_18 stem, Conv3d(3, 64, (3, 7, 7), stride (1, 2, 2), padding (1, 3, 3), bias=False)
    # on 3@16x112x112: depth (16 + 2 - 3)/1 + 1 = 16, height and width (112 + 6 - 7)//2 + 1 = 56.
    # Params 64*3*3*7*7 = 28,224; MACs 64*16*56*56 * 3*3*7*7 = 1,416,167,424; FLOPs 2*MACs.
    s = last("input 3@16x112x112\nconv 64@3x7x7/1x2x2 pad=1x3x3 bias=off")
    assert figures(s) == ((64, 16, 56, 56), 28_224, 0, 1_416_167_424, 2_832_334_848)
    assert s.node.attrs["pads"] == (1, 3, 3, 1, 3, 3)
    assert s.rf.size == (3, 7, 7) and s.rf.jump == (1, 2, 2)


def test_conv_one_number_applies_to_every_axis_of_a_volume():
    # 3@8x8x8, 4@3 pad=1 /2: each axis (8 + 2 - 3)//2 + 1 = 4. Params 4*3*27 + 4 = 328; MACs 4*64 * 81.
    s = last("input 3@8x8x8\nconv 4@3/2 pad=1")
    assert figures(s) == ((4, 4, 4, 4), 328, 0, 20_736, 41_728)
    assert s.node.attrs["kernel"] == (3, 3, 3) and s.node.attrs["stride"] == (2, 2, 2)


def test_conv_kernel_with_other_axes_than_the_input_is_a_located_error():
    fails("input 3@16x112x112\nconv 64@3x3", 2, "kernel 3x3 has 2 axes", "3@16x112x112 has 3")
    fails("input 1@8000\nconv 64@3x3", 2, "kernel 3x3 has 2 axes", "1@8000 has 1")
    fails("input 3@32x32\nconv 64@3x3x3", 2, "kernel 3x3x3 has 3 axes", "3@32x32 has 2")


def test_dwconv_on_a_signal_and_a_volume():
    # groups = C on every rank: 8@100 with 5 taps: 8*5 + 8 = 48 params, MACs 8*96 * 5 = 3,840;
    # on 4@4x8x8 with 3x3x3 pad=1: 4*27 + 4 = 112 params, MACs 4*256 * 27 = 27,648.
    assert figures(last("input 8@100\ndwconv 5")) == ((8, 96), 48, 0, 3_840, 8_448)
    assert figures(last("input 4@4x8x8\ndwconv 3x3x3 pad=1")) == ((4, 4, 8, 8), 112, 0, 27_648, 56_320)


def test_dwconv_mobilenet_stride_2():
    # MobileNet's second depthwise conv: 3x3/2 pad=same on 32@112x112 gives 32@56x56 (ceil(112/2));
    # total padding (56-1)*2 + 3 - 112 = 1, at the end. One 3x3 filter per channel: 32*1*9 = 288 params;
    # MACs 32*56*56*9 = 903,168; FLOPs 2*MACs, no bias.
    s = last("input 32@112x112\ndwconv 3x3/2 pad=same bias=off")
    assert figures(s) == ((32, 56, 56), 288, 0, 903_168, 1_806_336)
    assert s.node.attrs["groups"] == 32 and s.node.attrs["pads"] == (0, 0, 1, 1)


def test_dwconv_channel_multiplier():
    # mult=2: 3*2 = 6 output channels, each from one input channel: 6*1*9 + 6 = 60 params; MACs 6*8*8*9 = 3,456.
    s = last("input 3@8x8\ndwconv 3x3 pad=1 mult=2")
    assert figures(s) == ((6, 8, 8), 60, 0, 3_456, 2 * 3_456 + 6 * 64)


def test_conv_pad_per_axis():
    # PyTorch's Conv2d(3, 4, 3, padding=(1, 2)) on 3@8x8: 8 + 2 - 3 + 1 = 8 high, 8 + 4 - 3 + 1 = 10 wide
    s = last("input 3@8x8\nconv 4@3x3 pad=1x2")
    assert s.node.out_shape == (4, 8, 10) and s.node.attrs["pads"] == (1, 2, 1, 2)


# --- upconv -------------------------------------------------------------------------------------

def test_upconv_unet_doubles_the_map():
    # (32 - 1)*2 + 1*(2 - 1) + 1 = 64. Params C_in*C_out*kh*kw + C_out = 32*16*4 + 16 = 2,064;
    # MACs C_in*H_in*W_in*C_out*kh*kw = 32*32*32*16*4 = 2,097,152; FLOPs 2*MACs + 16*64*64 bias adds.
    s = last("input 32@32x32\nupconv 16@2x2/2")
    assert figures(s) == ((16, 64, 64), 2_064, 0, 2_097_152, 4_194_304 + 65_536)


def test_upconv_padding_crops_the_output():
    # DCGAN's 4x4/2 pad=1: (8 - 1)*2 - 2*1 + (4 - 1) + 1 = 16. Params 128*64*16 + 64 = 131,136;
    # MACs 128*8*8 * 64*4*4 = 8,388,608.
    s = last("input 128@8x8\nupconv 64@4x4/2 pad=1")
    assert figures(s)[:4] == ((64, 16, 16), 131_136, 0, 8_388_608)


def test_upconv_outpad_makes_pix2pix_upsampling_double_the_map():
    # ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1) on 128@64x64: (64 - 1)*2 - 2*1 + (3 - 1)
    # + 1 + 1 = 128. Params and MACs are outpad's without it: 128*64*9 + 64 = 73,792; 128*64*64 * 64*9 =
    # 301,989,888; the bias is added on the larger output: FLOPs 2*MACs + 64*128*128.
    s = last("input 128@64x64\nupconv 64@3x3/2 pad=1 outpad=1")
    assert figures(s) == ((64, 128, 128), 73_792, 0, 301_989_888, 2 * 301_989_888 + 64 * 128 * 128)
    with pytest.raises(DlcError, match="outpad must be >= 0 and below the stride"):
        last("input 4@8x8\nupconv 4@3x3/2 outpad=2")


# --- upsample -----------------------------------------------------------------------------------

def test_upsample_nearest_neighbour_copies():
    # 5*2 = 10; copies only: no parameters, no arithmetic.
    s = last("input 3@5x5\nupsample 2")
    assert figures(s) == ((3, 10, 10), 0, 0, 0, 0)


# --- instancenorm (issue 28) ---------------------------------------------------------------------

def test_instancenorm_cyclegan_after_its_first_conv():
    # CycleGAN's c7s1-64 on 3@256x256: 64@256x256 normalised per sample and channel. Params gamma and beta,
    # 2*64 = 128, none running; FLOPs 7 per element + 2 per channel: 7*64*256*256 + 128 = 29,360,256.
    s = last("input 3@256x256\npad 3 mode=reflect -> conv 64@7x7 -> instancenorm relu", "instancenorm")
    assert figures(s) == ((64, 256, 256), 128, 0, 0, 29_360_256)
    with pytest.raises(DlcError, match="expects an image"):
        last("input 12\ninstancenorm")


# --- groupnorm (issue 22) ------------------------------------------------------------------------

def test_groupnorm_stable_diffusions_resblock_norm():
    # SD's first ResBlock normalises 320@64x64 in 32 groups of 10 channels: gamma and beta 2*320 = 640
    # params, none running; FLOPs 9 per element + 2 per group: 9*320*64*64 + 64 = 11,796,544.
    s = last("input 320@64x64\ngroupnorm 32 silu", "groupnorm")
    assert figures(s) == ((320, 64, 64), 640, 0, 0, 11_796_544) and s.node.attrs["channels"] == 320
    # on a signal (Whisper-style 1-D features) and a volume: the channels' groups over every position
    assert figures(last("input 8@100\ngroupnorm 2")) == ((8, 100), 16, 0, 0, 9 * 800 + 4)
    assert last("input 4@3x5x5\ngroupnorm 4 eps=1e-6").params == 8
    fails("input 320@8x8\ngroupnorm 30", 2, "30 must divide 320")
    fails("input 320@8x8\ngroupnorm 32 eps=0", 2, "eps")
    fails("input seq 4 of 8\ngroupnorm 2", 2, "signal C@L, an image C@HxW or a volume")


# --- pixelshuffle (issue 28) ---------------------------------------------------------------------

def test_pixelshuffle_espcn_upscales_by_three():
    # ESPCN (Shi et al. 2016) at r = 3: its last conv gives 1*3*3 = 9 channels on 1@64x64, and the shuffle
    # makes them one 192x192 channel. Copies only: no parameters, no arithmetic. Field: the conv's 3, and the
    # jump 1/3 (three output pixels per input pixel), as upsample 3 gives.
    s = last("input 1@64x64\nconv 9@3x3 pad=1 -> pixelshuffle 3")
    assert figures(s) == ((1, 192, 192), 0, 0, 0, 0)
    assert s.rf.size == (3, 3) and s.rf.jump == last("input 1@64x64\nconv 9@3x3 pad=1 -> upsample 3").rf.jump
    with pytest.raises(DlcError, match="the 8 channels of 8@4x4 are not a multiple of 9"):
        last("input 8@4x4\npixelshuffle 3")


# --- tile (issue 28) -----------------------------------------------------------------------------

def test_tile_repeats_each_axis_as_its_shape_is_written():
    # ONNX's corpus test_operator_repeat, x.repeat(1, 2, 3, 4) on 2@3x4: 2*2 = 4 channels, 3*3 = 9, 4*4 = 16.
    # Copies only.
    assert figures(last("input 2@3x4\ntile 2@3x4")) == ((4, 9, 16), 0, 0, 0, 0)
    assert last("input seq 5 of 3\ntile 2x1").node.out_shape == (10, 3)  # the steps twice over
    with pytest.raises(DlcError, match="a count per axis of its input"):
        last("input 2@3x4\ntile 2x2")


# --- slice (issue 28) ----------------------------------------------------------------------------

def test_slice_keeps_consecutive_entries_of_one_axis():
    # the first 16 channels of 32@8x8 are 16@8x8; the last step of 5x4 is 1x4;
    # rows 2..5 of 3@8x8 are 3@4x8. Copies only.
    assert figures(last("input 32@8x8\nslice 16")) == ((16, 8, 8), 0, 0, 0, 0)
    assert last("input seq 5 of 4\nslice 1 start=-1 axis=steps").node.out_shape == (1, 4)
    assert last("input 3@8x8\nslice 4 start=2 axis=height").node.out_shape == (3, 4, 8)
    with pytest.raises(DlcError, match="4 entries from start=6 need 10 along height; 3@8x8 has 8"):
        last("input 3@8x8\nslice 4 start=6 axis=height")
    with pytest.raises(DlcError, match="takes axis=steps or axis=features"):
        last("input seq 5 of 4\nslice 1 axis=width")


# --- reshape (issue 28) --------------------------------------------------------------------------

def test_reshape_gives_the_written_shape():
    # ONNX's corpus test_operator_repeat_dim_overflow: a vector of 2 as the image 1@1x2. Copies only.
    s = last("input 2\nreshape 1@1x2")
    assert figures(s) == ((1, 1, 2), 0, 0, 0, 0)
    assert last("input 3@4x4\nreshape 12x4").node.out_shape == (12, 4)
    with pytest.raises(DlcError, match="reshape 5x4 holds 20 values; 3@4x4 has 48"):
        last("input 3@4x4\nreshape 5x4")


# --- pad (issue 28) ------------------------------------------------------------------------------

def test_pad_cyclegan_reflects_three_pixels_before_its_7x7_conv():
    # CycleGAN's generator: ReflectionPad2d(3) on 3@256x256 gives 3@262x262, and the 7x7 conv gives back
    # (262 - 7) + 1 = 256. Copies only: no parameters, no arithmetic, and each output pixel reads one input
    # pixel, so the conv's field is 7 as without the pad.
    s = last("input 3@256x256\npad 3 mode=reflect", "pad")
    assert figures(s) == ((3, 262, 262), 0, 0, 0, 0)
    assert rf(last("input 3@256x256\npad 3 mode=reflect -> conv 64@7x7")) == (7, 7, 1)
    assert last("input 3@256x256\npad 3 mode=reflect -> conv 64@7x7").node.out_shape == (64, 256, 256)


def test_pad_sides_written_apart():
    # PyTorch's ZeroPad2d((1, 2, 3, 4)) (left, right, top, bottom) on 3@4x4: 4 + 3 + 4 = 11 high, 4 + 1 + 2 = 7 wide
    s = last("input 3@4x4\npad 1 top=3 bottom=4 right=2")
    assert s.node.out_shape == (3, 11, 7) and s.node.attrs["pads"] == (3, 1, 4, 2)


def test_pad_refusals_say_what_fits():
    with pytest.raises(DlcError, match="at most 3 rows and 3 columns"):
        last("input 3@4x4\npad 4 mode=reflect")
    with pytest.raises(DlcError, match="constant, reflect, replicate"):
        last("input 3@4x4\npad 1 mode=wrap")
    with pytest.raises(DlcError, match="value= is the fill of mode=constant"):
        last("input 3@4x4\npad 1 mode=replicate value=1")
    with pytest.raises(DlcError, match="expects an image"):
        last("input 12\npad 1")


# --- maxpool / avgpool --------------------------------------------------------------------------

def test_maxpool_dilated_spreads_its_window():
    # PyTorch's MaxPool2d(3, 2, padding=1, dilation=2) on 8@16x16: the window spans 2*(3-1)+1 = 5, so
    # (16 + 2 - 5)/2 + 1 = 7. FLOPs stay k*k per output: 8*7*7*9 = 3,528. Field 5, jump 2.
    s = last("input 8@16x16\nmaxpool 3/2 pad=1 dil=2")
    assert figures(s) == ((8, 7, 7), 0, 0, 0, 3_528)
    assert rf(s) == (5, 5, 2)
    # ONNX's corpus test_MaxPool2d_stride_padding_dilation: 60x80/10, pads 10 (height) and 20 (width), dil 10
    assert last("input 1@1000x1000\nmaxpool 60x80/10 pad=10x20 dil=10").node.out_shape == (1, 43, 25)
    with pytest.raises(DlcError, match="unknown option `dil=`"):
        last("input 8@16x16\navgpool 3/2 dil=2")


def test_maxpool_alexnet_first_pool():
    # 3/2 on 96@55x55: (55 - 3)/2 + 1 = 27. FLOPs k*k per output: 96*27*27*9 = 629,856 (the course's 0.63 M).
    # Field after conv1 (11, jump 4): 11 + (3 - 1)*4 = 19, jump 4*2 = 8.
    s = last("input 3@227x227\nconv 96@11x11/4 -> maxpool 3/2")
    assert figures(s) == ((96, 27, 27), 0, 0, 0, 629_856)
    assert rf(s) == (19, 19, 8)


def test_maxpool_stride_defaults_to_the_window():
    # maxpool 2 is 2/2: 14 -> 7.
    assert last("input 4@14x14\nmaxpool 2").node.out_shape == (4, 7, 7)


def test_maxpool_ceil_googlenet():
    # 3/2 on 28x28: (28 - 3)/2 = 12.5; floor + 1 = 13, ceil + 1 = 14 (the last window starts at 26,
    # inside the input, so it is kept).
    assert last("input 480@28x28\nmaxpool 3/2 ceil").node.out_shape == (480, 14, 14)
    assert last("input 480@28x28\nmaxpool 3/2").node.out_shape == (480, 13, 13)


def test_maxpool_ceil_window_may_not_start_in_the_right_padding():
    # 2/2 pad=1 on 5: padded 7, (7 - 2)/2 = 2.5, ceil gives 4 windows starting at 0, 2, 4, 6; the one at 6
    # starts in the right padding (the input plus left padding ends at 5 + 1 = 6), so it is dropped: 3
    # (PyTorch and Caffe agree).
    assert last("input 1@5x5\nmaxpool 2/2 pad=1 ceil").node.out_shape == (1, 3, 3)


def test_maxpool_resnet_padding():
    # 3/2 pad=1 on 112: (112 + 2 - 3)/2 + 1 = 56.
    s = last("input 64@112x112\nmaxpool 3/2 pad=1")
    assert figures(s) == ((64, 56, 56), 0, 0, 0, 64 * 56 * 56 * 9)


def test_maxpool_padding_beyond_half_the_window_is_an_error():
    fails("input 1@8x8\nmaxpool 2 pad=2\n", 2, "pad")


def test_maxpool_on_a_signal_and_a_volume():
    # 16@4000, maxpool 4: 1000 windows of 4, 16*1000*4 = 64,000 comparisons counted as FLOPs, no MACs.
    s = last("input 16@4000\nmaxpool 4")
    assert figures(s) == ((16, 1000), 0, 0, 0, 64_000) and s.rf.size == (4,) and s.rf.jump == (4,)
    # r3d_18 keeps no pooling, but C3D's pool1 is 1x2x2: 64@16x112x112 -> 64@16x56x56.
    s = last("input 64@16x112x112\nmaxpool 1x2x2")
    assert figures(s)[:1] == ((64, 16, 56, 56),) and s.rf.jump == (1, 2, 2)
    # ceil on the depth axis: (5 - 2)/2 rounds up to 2, so 3 windows.
    assert last("input 2@5x4x4\nmaxpool 2 ceil").node.out_shape == (2, 3, 2, 2)


def test_avgpool_on_a_signal():
    # PyTorch's AvgPool1d(3, stride=2, padding=1) on 2@10: (10 + 2 - 3)//2 + 1 = 5.
    s = last("input 2@10\navgpool 3/2 pad=1")
    assert figures(s) == ((2, 5), 0, 0, 0, 30) and s.node.attrs["pads"] == (1, 1)


def test_avgpool_lenet_subsampling():
    # LeNet-5's S2: 2/2 on 6@28x28 gives 6@14x14; FLOPs 6*14*14 * 2*2 = 4,704.
    s = last("input 6@28x28\navgpool 2/2")
    assert figures(s) == ((6, 14, 14), 0, 0, 0, 4_704)


# --- gap / gmp ----------------------------------------------------------------------------------

def test_gap_resnet_head():
    # Global average pool of 2048@7x7: a 2048 vector; H*W = 49 FLOPs per channel = 100,352.
    # It sees the whole 7x7 input.
    s = last("input 2048@7x7\ngap")
    assert figures(s) == ((2048,), 0, 0, 0, 100_352)
    assert s.rf.whole and s.rf.size == (7, 7)


def test_gap_on_a_signal_and_a_volume():
    # one add per input element: 32*1000 and 512*2*7*7
    assert figures(last("input 32@1000\ngap")) == ((32,), 0, 0, 0, 32_000)
    s = last("input 512@2x7x7\ngap")
    assert figures(s) == ((512,), 0, 0, 0, 50_176) and s.rf.size == (2, 7, 7) and s.rf.whole


def test_gmp_global_max_pool():
    s = last("input 512@7x7\ngmp")
    assert figures(s) == ((512,), 0, 0, 0, 512 * 49)


# --- fc / flatten -------------------------------------------------------------------------------

def test_fc_nielsen_hidden_layer():
    # 784 -> 30: 784*30 + 30 = 23,550 params; 23,520 MACs; FLOPs 2*23,520 + 30 bias adds = 47,070.
    s = last("input 784\nfc 30")
    assert figures(s) == ((30,), 23_550, 0, 23_520, 47_070)
    assert s.rf is None  # a vector input has no receptive field


def test_fc_without_bias():
    s = last("input 30\nfc 10 bias=off")
    assert figures(s) == ((10,), 300, 0, 300, 600)


def test_fc_after_an_image_flattens_first_in_its_own_row():
    # AlexNet's fc6 reads 256@6x6 = 9,216 values: 9216*4096 + 4096 = 37,752,832 params.
    a = analysed("input 256@6x6\nfc 4096")
    kinds = [s.node.kind for s in a.nodes]
    assert kinds == ["input", "flatten", "fc"]
    assert a.nodes[1].node.out_shape == (9216,)
    assert figures(a.nodes[2])[:4] == ((4096,), 37_752_832, 0, 37_748_736)
    assert a.nodes[2].rf.whole and a.nodes[2].rf.size == (6, 6)


def test_fc_on_a_sequence_acts_on_each_step():
    # docs/language.md: fc 10 on 50x64 gives 50x10, one 64x10 weight for every step: 64*10 + 10 = 650 params;
    # MACs T*D*N = 50*64*10 = 32,000; FLOPs 2*32,000 + 50*10 bias adds = 64,500. No flatten is put first.
    a = analysed("input seq 50 of 64\nfc 10")
    assert [s.node.kind for s in a.nodes] == ["input", "fc"]
    assert figures(a.nodes[1]) == ((50, 10), 650, 0, 32_000, 64_500)


def test_fc_tied_reuses_the_embedding_table():
    # GPT-2's output layer: the 11x8 table of `embed 8 vocab=11` read transposed, no weight of its own.
    # Params: the table 11*8 = 88 once, the fc none (bias off); MACs 7 steps * 8 * 11 = 616.
    a = analysed("input seq 7\nembed 8 vocab=11 as tok\nfc 11 tied=tok bias=off")
    assert figures(a.nodes[-1]) == ((7, 11), 0, 0, 616, 2 * 616)
    assert a.totals.params == 88
    # with a bias: 11 parameters of its own, one add per output
    assert figures(last("input seq 7\nembed 8 vocab=11 as tok\nfc 11 tied=tok")) == ((7, 11), 11, 0, 616, 1_309)


def test_fc_tied_errors():
    fails("input seq 7\nembed 8 vocab=11 as tok\nfc 12 tied=tok", 3, "11x8", "11 units")
    fails("input seq 7 of 8\nfc 8 as h\nfc 8 tied=h", 3, "embed", "fc1 is a fc")
    fails("input seq 7\nembed 8 vocab=11 as tok\nfc 11 tied=tk", 3, "unknown label `tk`", "did you mean `tok`")
    fails("input seq 7\nembed 8 vocab=11 as tok\nfc 11 tied=3", 3, "label")


def test_flatten_lenet():
    # LeNet-5's S4 output 16@5x5 flattens to 400 values; a copy, so no FLOPs.
    s = last("input 16@5x5\nflatten")
    assert figures(s) == ((400,), 0, 0, 0, 0)


# --- embed --------------------------------------------------------------------------------------

def test_embed_lookup_table():
    # 200 token ids -> 200x128; the table is vocab x D = 20000*128 = 2,560,000 params; a lookup, no MACs.
    a = analysed("input seq 200\nembed 128 vocab=20000")
    assert a.nodes[0].node.out_shape == (200,) and a.nodes[0].node.dtype == "int64"
    assert figures(a.nodes[1]) == ((200, 128), 2_560_000, 0, 0, 0)


def test_embed_needs_its_vocabulary():
    fails("input seq 10\nembed 8\n", 2, "vocab")


# --- elementwise activations: same shape, no parameters, one FLOP per element -------------------

def activation(kind: str, options: str = ""):
    # 3@4x4 = 48 elements, one FLOP each.
    s = last(f"input 3@4x4\n{kind} {options}".strip())
    assert s.node.kind == kind
    assert figures(s) == ((3, 4, 4), 0, 0, 0, 48)
    assert rf(s) == (1, 1, 1)  # pointwise: the field does not grow


def test_relu_elementwise():
    activation("relu")


def test_relu6_elementwise():
    activation("relu6")


def test_sigmoid_elementwise():
    activation("sigmoid")


def test_tanh_elementwise():
    activation("tanh")


def test_elu_elementwise():
    activation("elu", "alpha=0.5")


def test_selu_elementwise():
    activation("selu")


def test_gelu_elementwise():
    activation("gelu")


def test_silu_two_flops_per_element_and_a_suffix():
    # x * sigmoid(x): the sigmoid and the product, 2 per element; 3@4x4 -> 96
    s = last("input 3@4x4\nsilu")
    assert s.node.kind == "silu" and figures(s) == ((3, 4, 4), 0, 0, 0, 96) and rf(s) == (1, 1, 1)
    # `swish` is the same kind, and both follow a size as relu does: fc 64 is 2*64*32 + 64 FLOPs, silu 128
    a = analysed("input 32\nfc 64 swish")
    assert [n.node.kind for n in a.nodes] == ["input", "fc", "silu"] and a.nodes[-1].flops == 128
    assert a.nodes[-1].node.row == a.nodes[-2].node.row

def test_leaky_elementwise_with_its_slope():
    activation("leaky", "alpha=0.2")
    assert last("input 4\nleaky alpha=0.2").node.attrs["alpha"] == 0.2
    assert last("input 4\nleaky").node.attrs["alpha"] == 0.01


def test_identity_costs_nothing():
    assert figures(last("input 3@4x4\nidentity")) == ((3, 4, 4), 0, 0, 0, 0)


def test_softmax_three_flops_per_element():
    # exp, sum, divide: 3 per element; after fc 10 that is 30.
    s = last("input 84\nfc 10 softmax")
    assert s.node.kind == "softmax" and figures(s) == ((10,), 0, 0, 0, 30)


# --- dropout / noise / bn / lrn -----------------------------------------------------------------

def test_dropout_identity_at_inference():
    assert figures(last("input 4096\ndropout 0.5")) == ((4096,), 0, 0, 0, 0)


def test_dropout_probability_must_be_below_one():
    fails("input 10\ndropout 1\n", 2, "dropout")


def test_noise_training_only():
    assert figures(last("input 3@4x4\nnoise 0.1")) == ((3, 4, 4), 0, 0, 0, 0)


def test_bn_on_an_image():
    # 64 channels: gamma and beta trainable (128), running mean and variance not (128);
    # 2 FLOPs per element at inference: 2*64*56*56 = 401,408.
    s = last("input 64@56x56\nbn")
    assert figures(s) == ((64, 56, 56), 128, 128, 0, 401_408)
    assert s.node.attrs["eps"] == 1e-5


def test_bn_on_a_vector_with_its_own_eps():
    s = last("input 30\nbn eps=0.001")
    assert figures(s) == ((30,), 60, 60, 0, 60)
    assert s.node.attrs["eps"] == 0.001


def test_bn_on_a_signal_and_a_volume_normalises_each_channel():
    # BatchNorm1d on 16@4000 and BatchNorm3d on 64@16x56x56: per channel, not per step or per position
    assert figures(last("input 16@4000\nbn")) == ((16, 4000), 32, 32, 0, 128_000)
    assert figures(last("input 64@16x56x56\nbn"))[:3] == ((64, 16, 56, 56), 128, 128)
    fails("input seq 10 of 4\nbn", 2, "bn expects a vector, a signal C@L", "10x4")


def test_lrn_default_size_5():
    # size + 4 FLOPs per element: 9 * 96*55*55 = 2,613,600.
    s = last("input 96@55x55\nlrn")
    assert s.node.attrs["size"] == 5
    assert figures(s) == ((96, 55, 55), 0, 0, 0, 2_613_600)


def test_lrn_size_3():
    assert last("input 8@2x2\nlrn 3").flops == 7 * 32


# --- input --------------------------------------------------------------------------------------

def test_input_forms():
    # A network needs a layer after its input; `identity` is the cheapest.
    def first(spec):
        return analysed(spec + " -> identity").nodes[0]

    img = first("input 3@227x227")
    assert figures(img) == ((3, 227, 227), 0, 0, 0, 0) and rf(img) == (1, 1, 1)
    assert img.activations == 3 * 227 * 227
    assert first("input 784").node.out_shape == (784,)
    tokens = analysed("input seq 200 -> embed 4 vocab=10").nodes[0]  # token ids feed only embed
    assert tokens.node.out_shape == (200,) and tokens.node.dtype == "int64"
    steps = first("input seq 50 of 64")
    assert steps.node.out_shape == (50, 64) and steps.node.dtype == "float32"


def test_input_signal_and_volume():
    # issue 28: C@L and C@DxHxW; a signal is not the sequence of the same numbers (its channels come first)
    sig = analysed("input 1@8000 -> identity").nodes[0]
    assert sig.node.out_shape == (1, 8000) and type(sig.node.out_shape).__name__ == "Signal"
    assert sig.rf.size == (1,) and sig.activations == 8000
    vol = analysed("input 3@16x112x112 -> identity").nodes[0]
    assert vol.node.out_shape == (3, 16, 112, 112) and vol.rf.size == (1, 1, 1)
    assert type(analysed("input seq 1 of 8000 -> identity").nodes[0].node.out_shape) is tuple
    fails("input 3@4x4x4x4\nrelu", 1, "1 to 3 spatial axes", "3@4x4x4x4")


def test_fc_after_a_signal_or_volume_flattens_first():
    # 8@100 flattens to 800 (a sequence of 8 steps would instead get fc per step)
    stats = analysed("input 8@100\nfc 10").nodes
    assert [s.node.kind for s in stats] == ["input", "flatten", "fc"] and stats[-1].params == 8010
    assert analysed("input 2@2x3x4\nfc 5").nodes[-1].params == 2 * 2 * 3 * 4 * 5 + 5


def test_input_alone_is_an_error():
    fails("input 784\n", 1, "no layers")


# --- add / concat -------------------------------------------------------------------------------

BASIC = """input 64@56x56
default conv bias=off
add(
    conv 128@3x3/2 pad=1 bn relu
    conv 128@3x3 pad=1 bn
  | shortcut
)
"""


def test_add_resnet_block_with_a_projection_shortcut():
    # 64@56x56 -> 128@28x28 changes the shape, so the shortcut is conv 128@1x1/2 bias=off -> bn:
    # 128*64 = 8,192 params + bn 256 (and 256 running statistics). The main path: 128*64*9 + 256 (bn)
    # + 128*128*9 + 256 (bn) = 73,728 + 147,456 + 512 = 221,696. The add: one FLOP per element, 128*28*28.
    a = analysed(BASIC)
    add = a.nodes[-1]
    assert add.node.kind == "add" and figures(add) == ((128, 28, 28), 0, 0, 0, 100_352)
    assert a.totals.params == 221_696 + 8_192 + 256
    assert a.totals.non_trainable == 3 * 256
    # The main path's field: 3 (jump 2), then 3 + 2*2 = 7; the 1x1/2 shortcut sees 1. The largest is reported.
    assert rf(add) == (7, 7, 2)


def test_add_identity_shortcut_keeps_the_shape():
    a = analysed("input 8@4x4\nadd(\n    conv 8@3x3 pad=1\n  | shortcut\n)\n")
    assert [s.node.kind for s in a.nodes] == ["input", "conv", "add"]
    assert a.nodes[-1].flops == 8 * 16


def test_add_a_label():
    s = last("input 8@8x8\nconv 8@3x3 pad=1 as a\nconv 8@3x3 pad=1\nadd a\n")
    assert figures(s) == ((8, 8, 8), 0, 0, 0, 512)
    assert len(s.node.inputs) == 2


def test_add_of_unequal_shapes_is_an_error():
    fails("input 8@8x8\nconv 8@3x3 as a\nconv 8@3x3\nadd a\n", 4, "8@6x6", "8@4x4")


def test_mul_swiglu_product_of_equal_shapes():
    # Llama's feed-forward on 10x16 with f = 24: gate and up are 16x24 each (384), down 24x16 (384),
    # 1,152 params; the product is one multiply per output element, 10*24 = 240 FLOPs and no MACs.
    a = analysed("input seq 10 of 16\nmul( fc 24 silu bias=off | fc 24 bias=off ) -> fc 16 bias=off")
    mul = last("input seq 10 of 16\nmul( fc 24 silu bias=off | fc 24 bias=off )")
    assert figures(mul) == ((10, 24), 0, 0, 0, 240) and len(mul.node.inputs) == 2
    assert a.totals.params == 1_152 and a.totals.macs == 3 * 10 * 16 * 24


def test_mul_a_vector_of_features_over_an_image_and_a_sequence():
    # squeeze-and-excite's scale: C against C@HxW, repeated over the 4x4 positions: 8*16 = 128 FLOPs
    s = last("input 8@6x6\nconv 8@3x3 as feat\ngap -> fc 8 sigmoid\nmul feat")
    assert figures(s) == ((8, 4, 4), 0, 0, 0, 128) and s.node.attrs["broadcast"] == (True, False)  # the current, then feat
    # the vector may come first; on TxC the same rule repeats it over the steps: 5*6 = 30
    seq = last("input seq 5 of 6\nmul( seqpool | identity )")
    assert figures(seq) == ((5, 6), 0, 0, 0, 30) and seq.node.attrs["broadcast"] == (True, False)
    assert figures(last("input 6\nmul( fc 6 | fc 6 | identity )")) == ((6,), 0, 0, 0, 12)


def test_mul_of_mismatched_shapes_names_both():
    fails("input 8@8x8\nconv 8@3x3 as a\nconv 8@3x3\nmul a\n", 4, "8@6x6", "8@4x4", "mul needs equal shapes")
    fails("input 8@6x6\nmul( conv 4@3x3 | gap )", 2, "4@4x4", "8", "vector of the 4 features of 4@4x4")
    fails("input seq 5 of 6\nmul( fc 3 | seqpool )", 2, "5x3", "6")
    fails("input 6\nmul( fc 4 | fc 5 )", 2, "mul (mul1)", "mul needs equal shapes, got 4 and 5")  # vectors: no broadcast
    fails("input 8\nmul( fc 8 | shortcut )", 2, "not of mul")


INCEPTION_3A = """input 192@28x28
concat(
    conv 64@1x1 relu
  | conv 96@1x1 relu -> conv 128@3x3 pad=1 relu
  | conv 16@1x1 relu -> conv 32@5x5 pad=2 relu
  | maxpool 3/1 pad=1 -> conv 32@1x1 relu
)
"""


def test_concat_inception_3a():
    # Channels 64 + 128 + 32 + 32 = 256 at 28x28. Weights 192*64 + 192*96 + 96*128*9 + 192*16 + 16*32*25
    # + 192*32 = 163,328, which Szegedy et al. 2015 (Table 1, row inception (3a)) print as 159K (K = 1024),
    # with 128M ops = 163,328 * 28*28 = 128,049,152 MACs. Biases add 64+96+128+16+32+32 = 368.
    a = analysed(INCEPTION_3A)
    cat = a.nodes[-1]
    assert cat.node.kind == "concat" and figures(cat) == ((256, 28, 28), 0, 0, 0, 0)
    assert a.totals.params == 163_328 + 368
    assert a.totals.macs == 128_049_152


def test_concat_a_label_u_net_skip():
    # docs/language.md's U-Net example: upconv 16@2x2/2 on 32@32x32 is 16@64x64; with the 16@64x64 skip, 32@64x64.
    spec = ("input 1@64x64\ndefault conv pad=same\nconv 16@3x3 relu as e1 -> maxpool 2\nconv 32@3x3 relu\n"
            "upconv 16@2x2/2 -> concat e1\n")
    assert last(spec).node.out_shape == (32, 64, 64)


def test_concat_of_vectors_and_sequences():
    assert last("input 4\nconcat(\n    fc 3\n  | fc 5\n)\n").node.out_shape == (8,)
    assert last("input seq 10 of 4\nconcat(\n    rnn 3 sequences\n  | identity\n)\n").node.out_shape == (10, 7)


def test_concat_of_unequal_spatial_sizes_is_an_error():
    fails("input 8@8x8\nconv 8@3x3 as a\nconv 8@3x3\nconcat a\n", 4, "spatial")


# --- transformers: layernorm, attention, posembed, clstoken, tokens, seqpool ---------------------

def test_layernorm_on_each_step_and_on_a_vector():
    # gamma and beta per feature: 2*8 = 16 params, no MACs; FLOPs 7 per element (mean, centre, square and
    # add for the variance, scale by 1/std, gamma, beta) and 2 per step (eps add, square root):
    # 7*5*8 + 2*5 = 290.
    assert figures(last("input seq 5 of 8\nlayernorm")) == ((5, 8), 16, 0, 0, 290)
    assert figures(last("input 6\nln eps=1e-6")) == ((6,), 12, 0, 0, 44)
    assert last("input 6\nln eps=1e-6").node.attrs["eps"] == 1e-6


def test_layernorm_refuses_an_image_unless_told_the_axis():
    fails("input 3@4x4\nlayernorm", 2, "vector or of each step", "layernorm channels")
    fails("input 8\nlayernorm channels", 2, "each position's channels", "got 8")
    fails("input 3@4x4\nlayernorm channels eps=0", 2, "eps must be > 0")


def test_rmsnorm_on_each_step_and_on_a_vector():
    # gamma only, per feature: 8 params, no MACs; FLOPs 4 per element (square, mean-square sum, scale by
    # 1/rms, gamma) and 2 per step (eps add, square root): 4*5*8 + 2*5 = 170.
    assert figures(last("input seq 5 of 8\nrmsnorm")) == ((5, 8), 8, 0, 0, 170)
    assert figures(last("input 6\nrmsnorm eps=1e-6")) == ((6,), 6, 0, 0, 26)
    assert last("input 6\nrmsnorm").node.attrs["eps"] == 1e-5  # Llama's
    assert rf(last("input 3@4x4\nconv 6@3x3 -> tokens -> rmsnorm")) == (3, 3, 1)  # per step: the field is kept


def test_rmsnorm_refuses_an_image_and_a_bad_eps():
    fails("input 3@4x4\nrmsnorm", 2, "vector or of each step", "3@4x4")
    fails("input 8\nrmsnorm eps=-1", 2, "rmsnorm eps must be > 0", "eps=-1")
    fails("input 8\nrmsnorm eps=0", 2, "rmsnorm eps must be > 0")

def test_attention_counts():
    # D = 16, 4 heads, T = 10. Params: four 16x16 projections and their biases, 4*256 + 4*16 = 1,088.
    # MACs: projections T*4*D^2 = 10*4*256 = 10,240; scores and weighted sum 2*T^2*D = 2*100*16 = 3,200.
    # FLOPs: 2*13,440 + bias adds 4*T*D = 640 + scaling and softmax 4 per score, 4*H*T^2 = 1,600.
    s = last("input seq 10 of 16\nattention 4")
    assert figures(s) == ((10, 16), 1_088, 0, 13_440, 29_120)
    assert s.node.attrs["head_dim"] == 4 and not s.node.attrs["causal"]
    # without biases 1,024 params and 640 fewer FLOPs; causal computes the same dense square
    assert figures(last("input seq 10 of 16\nmha 4 bias=off")) == ((10, 16), 1_024, 0, 13_440, 28_480)
    causal = last("input seq 10 of 16\nattention 4 causal dropout=0.1")
    assert figures(causal) == ((10, 16), 1_088, 0, 13_440, 29_120) and causal.node.attrs["dropout"] == 0.1


def test_attention_without_the_keys_bias():
    # Whisper's k_proj has no bias: q·bk is one constant added to every score of a query, which softmax
    # ignores. D = 16, T = 10: 4*256 + 3*16 = 1,072 params (16 fewer than with every bias), same MACs,
    # and T*D = 160 fewer bias adds: 29,120 - 160 = 28,960 FLOPs.
    s = last("input seq 10 of 16\nattention 4 keybias=off")
    assert figures(s) == ((10, 16), 1_072, 0, 13_440, 28_960)
    assert set(KINDS["attention"].params(s.node.attrs, [(10, 16)])) == {"Wq", "Wk", "Wv", "Wo", "bq", "bv", "bo"}
    # with bias=off there is no key bias to drop: 1,024 params either way
    assert figures(last("input seq 10 of 16\nattention 4 bias=off keybias=off"))[1] == 1_024
    # cross-attention to S = 6 steps of E = 12: Wq, Wo 256 each, Wk, Wv 16*12 = 192 each, bq, bv, bo 48:
    # 944 params. MACs 2*T*D^2 + 2*S*E*D + 2*T*S*D = 5,120 + 2,304 + 1,920 = 9,344; FLOPs 2*9,344 + 2*T*D
    # (bq, bo) + S*D (bv alone) + 4*H*T*S = 18,688 + 320 + 96 + 960 = 20,064.
    cross = "input seq 6 of 12 as src\ninput seq 10 of 16 as words\nattention 4 from=src keybias=off"
    assert figures(last(cross)) == ((10, 16), 944, 0, 9_344, 20_064)


def test_attention_gpt2_small_layer():
    # One GPT-2 small attention at T=1024, D=768: 4*768^2 + 4*768 = 2,362,368 params;
    # 1024*4*768^2 + 2*1024^2*768 = 2,415,919,104 + 1,610,612,736 = 4,026,531,840 MACs.
    s = last("input seq 1024 of 768\nattention 12 causal")
    assert (s.params, s.macs) == (2_362_368, 4_026_531_840)


def test_attention_errors():
    fails("input seq 10 of 16\nattention 3", 2, "3 heads must divide 16")
    fails("input 16\nattention 4", 2, "sequence TxD", "16")
    fails("input seq 10 of 16\nattention 4 dropout=1", 2, "dropout")


def test_attention_grouped_kv_rope_and_window():
    # D = 16, 4 heads of 4, kv=2: keys and values are 2 heads of 4 = 8 features. Params: Wq, Wo 16x16
    # (256 each), Wk, Wv 8x16 (128 each), biases 16 + 8 + 8 + 16: 768 + 48 = 816.
    # MACs at T = 10: queries and output 2*T*D^2 = 5,120, keys and values 2*T*D*8 = 2,560, the products
    # 2*T^2*D = 3,200 (every query head scores and sums): 10,880. FLOPs 2*10,880 + bias adds T*(16+8+8+16)
    # = 480 + 4*H*T^2 = 1,600: 23,840.
    s = last("input seq 10 of 16\nattention 4 kv=2")
    assert figures(s) == ((10, 16), 816, 0, 10_880, 23_840)
    assert (s.node.attrs["kv"], s.node.attrs["rope"], s.node.attrs["window"]) == (2, False, None)
    # rope: no MACs; 3 FLOPs per rotated query and key feature (q*cos + swap(q)*sin): 3*T*(16+8) = 720
    r = last("input seq 10 of 16\nattention 4 kv=2 rope")
    assert figures(r) == ((10, 16), 816, 0, 10_880, 24_560) and r.node.attrs["rope"] == 10000.0
    assert last("input seq 10 of 16\nattention 4 rope=500000").node.attrs["rope"] == 500000.0
    # a window is a mask like causal: the dense kernel computes the whole square, nothing less is counted
    w = last("input seq 10 of 16\nattention 4 kv=2 causal window=3")
    assert figures(w) == ((10, 16), 816, 0, 10_880, 23_840) and w.node.attrs["window"] == 3
    # kv=1 is multi-query attention: one 4-wide key and value head, 256*2 + 64*2 = 640 weights
    assert last("input seq 10 of 16\nattention 4 kv=1 bias=off").params == 640
    # kv = heads is plain multi-head attention
    assert figures(last("input seq 10 of 16\nattention 4 kv=4")) == figures(last("input seq 10 of 16\nattention 4"))


def test_attention_llama3_8b_layer():
    # Llama-3-8B's attention (D = 4096, 32 heads of 128, 8 kv heads, no biases): q and o 4096x4096,
    # k and v 4096x1024: 2*16,777,216 + 2*4,194,304 = 41,943,040 params per layer. At 2048 tokens the
    # projections are 2048*41,943,040 = 85,899,345,920 MACs and the score and weighted-sum products
    # 2*2048^2*4096 = 34,359,738,368, which over 32 layers is the issue's 1,099,511,627,776.
    s = last("input seq 2048 of 4096\nattention 32 kv=8 rope=500000 causal bias=off")
    assert s.params == 41_943_040
    assert s.macs == 85_899_345_920 + 34_359_738_368
    assert 32 * (s.macs - 2048 * s.params) == 1_099_511_627_776


def test_attention_option_errors_point_at_the_value():
    fails("input seq 10 of 16\nattention 4 kv=3", 2, "kv=3", "must divide 4")
    fails("input seq 10 of 16\nattention 4 kv=0", 2, "kv", "at least 1")
    fails("input seq 10 of 16\nattention 4 rope=0", 2, "rope=0")
    fails("input seq 10 of 16\nattention 4 rope=-1", 2, "rope")
    fails("input seq 10 of 16\nattention 4 rope=on", 2, "rope takes a number")
    fails("input seq 10 of 16\nattention 4 rope rope=5", 2, "twice")
    fails("input seq 10 of 12\nattention 4 rope", 2, "must be even", "3")
    fails("input seq 10 of 16\nattention 4 causal window=0", 2, "window", "at least 1")
    fails("input seq 10 of 16\nattention 4 window=4", 2, "window=4", "causal")
    with pytest.raises(DlcError) as err:
        compile_spec("input seq 10 of 16\nattention 4 kv=3", file="<test>")
    assert err.value.pos.col == len("attention 4 kv=") + 1  # the caret under the value


CROSS = "input seq 10 of 16 as text\ninput seq 10 as pad\ninput seq 7 of 32 as img\n"
UNREAD = "input seq 10 of 16 as text\ninput seq 7 of 32 as img\n"


def test_cross_attention_projects_the_source_from_its_own_width():
    # 7 queries of D = 32, 4 heads, keys and values from 10 text steps of E = 16. Params: Wq, Wo 32x32
    # (1,024 each), Wk, Wv 32x16 (512 each), biases 4*32: 3,200. MACs: query and output projections
    # 2*7*32^2 = 14,336; key and value projections once per source step 2*10*16*32 = 10,240; scores and
    # weighted sum 2*7*10*32 = 4,480: 29,056. FLOPs: 2*29,056 + biases 2*7*32 + 2*10*32 = 1,088 + scaling
    # and softmax 4 per score and head 4*4*7*10 = 1,120: 60,320.
    s = last(UNREAD + "attention 4 from=text")
    assert figures(s) == ((7, 32), 3_200, 0, 29_056, 60_320)
    assert s.node.inputs == ["img", "text"] and (s.node.attrs["source_steps"], s.node.attrs["source_dim"]) == (10, 16)
    # a padding mask over the 10 keys adds an input and nothing else
    m = last(CROSS + "attention 4 from=text mask=pad")
    assert figures(m) == figures(s) and m.node.inputs == ["img", "text", "pad"]
    # grouped heads: kv=2 keys and values of 2*8 = 16 features, Wk and Wv 16x16
    assert last(UNREAD + "attention 4 from=text kv=2").params == 2 * 1_024 + 2 * 256 + 32 + 16 + 16 + 32


def test_a_padding_mask_on_self_attention_counts_as_without_it():
    plain = last("input seq 10 of 16\nattention 4")
    masked = last("input seq 10 as pad\ninput seq 10 of 16 as words\nattention 4 mask=pad causal")
    assert figures(masked) == figures(plain) == ((10, 16), 1_088, 0, 13_440, 29_120)


def test_cross_attention_and_mask_errors():
    fails(CROSS + "attention 4 from=text causal mask=pad", 4, "from=text", "causal")
    fails(CROSS + "attention 4 from=text rope mask=pad", 4, "rope")
    fails(CROSS + "attention 4 mask=pad", 4, "mask=pad", "7", "10")  # self-attention: 7 keys, not 10
    fails(CROSS + "attention 4 from=pad", 4, "sequence TxD")
    fails(CROSS + "attention 4 from=nowhere", 4, "nowhere")
    fails(CROSS + "attention 4 from=3", 4, "from takes the label")
    fails(CROSS + "attention 4 from=text", 2, "never read", "mask=pad")


def test_posembed_adds_a_table_of_positions():
    # a T x D table: 10*16 = 160 params, one add per element.
    assert figures(last("input seq 10 of 16\nposembed")) == ((10, 16), 160, 0, 0, 160)
    fails("input 16\nposembed", 2, "sequence")


def test_posembed_with_a_longer_table_or_fixed_sinusoids():
    # BERT-base's positions: a 512 x 768 table read at 128 tokens is 393,216 params (128 x 768 would be
    # 98,304); one add per element of the 128 x 768 output
    assert figures(last("input seq 128 of 768\nposembed 512")) == ((128, 768), 393_216, 0, 0, 98_304)
    # sinusoids: nothing learned, the same add
    assert figures(last("input seq 1500 of 384\nposembed fixed")) == ((1500, 384), 0, 0, 0, 576_000)
    fails("input seq 10 of 16\nposembed 8", 2, "8 positions", "10 steps")
    fails("input seq 10 of 16\nposembed 20 fixed", 2, "posembed fixed")
    fails("input seq 10 of 7\nposembed fixed", 2, "even")
    fails("input seq 10 of 2\nposembed fixed", 2, "at least 4")  # one frequency: 10000^(-i/0)



def test_clstoken_puts_one_learned_step_first():
    # ViT: 196 patches + the class token = 197 steps; D = 768 params.
    assert figures(last("input seq 196 of 768\nclstoken")) == ((197, 768), 768, 0, 0, 0)


def test_tokens_reads_a_signal_as_a_sequence_of_its_positions():
    # Whisper's stem: 80@3000 -> conv 384@3 pad=1 -> 384@3000 -> conv 384@3/2 pad=1 -> 384@1500 (floor((3000 +
    # 2 - 3)/2) + 1), read as 1500 steps of 384 features
    a = analysed("input 80@3000\nconv 384@3 pad=1 gelu\nconv 384@3/2 pad=1 gelu\ntokens")
    assert figures(a.nodes[-1]) == ((1500, 384), 0, 0, 0, 0)
    assert [s.macs for s in a.nodes if s.node.kind == "conv"] == [384 * 3000 * 80 * 3, 384 * 1500 * 384 * 3]
    with pytest.raises(DlcError, match="signal C@L or an image"):
        last("input 4@2x3x3\ntokens")


def test_tokens_reads_an_image_as_a_sequence_of_pixels():
    # ViT-B/16's patches: 768@14x14 -> 14*14 = 196 steps of 768 features; a reshape, nothing counted.
    # The patch conv sees 16x16 pixels with jump 16, and so does each token; attention sees the image.
    a = analysed("input 3@224x224\nconv 768@16x16/16\ntokens\nattention 12")
    tokens, attention = a.nodes[2], a.nodes[3]
    assert figures(tokens) == ((196, 768), 0, 0, 0, 0)
    assert rf(tokens) == (16, 16, 16) and not tokens.rf.whole
    assert attention.rf.whole and attention.rf.size == (224, 224)
    # causal: the last step sees every step, and the largest field is the one reported
    assert last("input 3@32x32\nconv 8@16x16/16\ntokens\nattention 2 causal").rf.whole
    fails("input seq 4 of 3\ntokens", 2, "image")


def test_image_lays_tokens_back_out_as_an_image():
    # Stable Diffusion's transformer at 64x64: 4096 steps of 320 back to 320@64x64, a copy: nothing counted,
    # and each pixel still sees what its token saw
    a = analysed("input 4@64x64\nconv 320@3x3 pad=1\ntokens\nimage")
    image = a.nodes[-1]
    assert figures(a.nodes[-2]) == ((4096, 320), 0, 0, 0, 0)
    assert figures(image) == ((320, 64, 64), 0, 0, 0, 0)
    assert rf(image) == rf(a.nodes[-2]) == (3, 3, 1)
    # a sequence with no grid names its own; fc keeps the grid it reads
    assert figures(last("input seq 24 of 8\nimage 4x6")) == ((8, 4, 6), 0, 0, 0, 0)
    assert figures(last("input 3@4x6\ntokens\nfc 5\nimage")) == ((5, 4, 6), 0, 0, 0, 0)
    fails("input seq 24 of 8\nimage", 2, "without one", "image HxW")
    fails("input seq 24 of 8\nimage 5x6", 2, "30 steps", "24")
    fails("input seq 24 of 8\nimage 2x3x4", 2, "HxW")
    fails("input 3@4x6\nimage", 2, "sequence")


def test_seqpool_first_last_and_mean():
    # 10x16 -> 16. first and last pick a step (no FLOPs); mean adds 10*16 values (160 FLOPs).
    assert figures(last("input seq 10 of 16\nseqpool first")) == ((16,), 0, 0, 0, 0)
    assert last("input seq 10 of 16\nseqpool last").node.attrs["mode"] == "last"
    mean = last("input seq 10 of 16\nseqpool")
    assert figures(mean) == ((16,), 0, 0, 0, 160) and mean.node.attrs["mode"] == "mean"
    assert last("input seq 10 of 16\nseqpool mean").node.attrs["mode"] == "mean"
    fails("input seq 10 of 16\nseqpool first last", 2, "one of the flags")
    fails("input 16\nseqpool", 2, "sequence")


# --- rnn / lstm / gru ---------------------------------------------------------------------------

def test_rnn_last_step_and_sequences():
    # H*(D + H) + 2H = 16*(8 + 16) + 32 = 416 params; MACs T*H*(D + H) = 10*16*24 = 3,840;
    # FLOPs 2*3,840 + T*(3*H joins and biases + H tanh) = 7,680 + 10*64 = 8,320.
    s = last("input seq 10 of 8\nrnn 16")
    assert figures(s) == ((16,), 416, 0, 3_840, 8_320)
    assert last("input seq 10 of 8\nrnn 16 sequences").node.out_shape == (10, 16)


def test_lstm_text_classifier():
    # 4H*(D + H) + 8H = 4*256*(128 + 256) + 8*256 = 395,264 (ONNX and PyTorch count two bias vectors per gate);
    # MACs 200 steps * 4*256*384 = 78,643,200.
    # FLOPs 2*MACs + 200*(3*4*256 + 9*256) = 157,286,400 + 1,075,200.
    s = last("input seq 200\nembed 128 vocab=20000\nlstm 256")
    assert figures(s) == ((256,), 395_264, 0, 78_643_200, 157_286_400 + 1_075_200)
    assert s.rf is None


def test_lstm_bidirectional_sequences():
    # Two directions: twice the weights and the products; 2H features per step.
    s = last("input seq 200\nembed 128 vocab=20000\nlstm 256 bidirectional sequences")
    assert figures(s)[:4] == ((200, 512), 2 * 395_264, 0, 2 * 78_643_200)


def test_gru_counts():
    # 3H*(D + H) + 6H = 3*32*(16 + 32) + 6*32 = 4,800; MACs 20*3*32*48 = 92,160;
    # FLOPs 2*92,160 + 20*(3*3*32 + 7*32) = 184,320 + 10,240.
    s = last("input seq 20 of 16\ngru 32")
    assert figures(s) == ((32,), 4_800, 0, 92_160, 194_560)
    assert last("input seq 20 of 16\ngru 32 bidirectional").node.out_shape == (64,)


# --- receptive field: rf_out = rf_in + dil*(k-1)*jump_in, jump_out = jump_in*stride ---------------

def test_receptive_field_two_3x3_convs_see_5():
    # 1 + 2*1 = 3, then 3 + 2*1 = 5.
    assert rf(last("input 1@16x16\nconv 1@3x3\nconv 1@3x3")) == (5, 5, 1)


def test_receptive_field_three_3x3_convs_see_7():
    # Simonyan & Zisserman 2015, Section 2.3: three stacked 3x3 layers have a 7x7 effective field.
    assert rf(last("input 1@16x16\nconv 1@3x3 x3")) == (7, 7, 1)


def test_receptive_field_with_a_stride_2_pool_between():
    # conv 3x3: 3, jump 1; maxpool 2/2: 3 + 1*1 = 4, jump 2; conv 3x3: 4 + 2*2 = 8, jump 2.
    assert rf(last("input 1@16x16\nconv 1@3x3\nmaxpool 2/2\nconv 1@3x3")) == (8, 8, 2)


def test_receptive_field_through_transposed_windows():
    # conv 3x3 then maxpool 2/2: field 4, jump 2. An upconv output pixel at position o reads the input pixels
    # i with o = i*s + t, 0 <= t < k: at most ceil(k/s) of them, spanning floor((k-1)/s) + 1, so the field
    # grows by floor((k-1)/s) * jump_in and the jump shrinks to 2/2 = 1.
    head = "input 1@16x16\nconv 1@3x3\nmaxpool 2/2\n"
    assert rf(last(head + "upconv 1@2x2/2")) == (4, 4, 1)  # 2x2/2: each output copies one input pixel
    assert rf(last(head + "upconv 1@3x3/2")) == (6, 6, 1)  # 4 + 1*2
    assert rf(last(head + "upconv 1@4x4/2 pad=1")) == (6, 6, 1)  # 4 + floor(3/2)*2
    assert rf(last(head + "upsample 2")) == (4, 4, 1)  # nearest neighbour: a copy


# --- experts (a mixture of experts) -------------------------------------------------------------

MIXTURE = "input seq 8 of 16\nexperts 4 top=2 {\n  fc 32 relu\n  fc 16\n}\nfc 3\n"


def test_experts_count_every_expert_in_params_and_k_of_them_in_active_params_and_macs():
    a = analysed(MIXTURE)
    expert = 16 * 32 + 32 + 32 * 16 + 16  # 1,072: fc 32 and fc 16 with biases
    router = 16 * 4  # fc 4 without bias
    head = 16 * 3 + 3
    assert a.totals.params == router + 4 * expert + head == 4_403
    assert a.totals.active_params == router + 2 * expert + head == 2_259
    # per step: the router and 2 experts' products; 8 steps
    assert a.totals.macs == 8 * (16 * 4 + 2 * (16 * 32 + 32 * 16) + 16 * 3) == 17_280
    joined = last(MIXTURE, "experts")
    # per step: softmax over the 2 kept logits (3 each), 2 multiplies and a sum of 2 per feature
    assert figures(joined) == ((8, 16), 0, 0, 0, 8 * (3 * 2 + 4 * 16))


def test_experts_without_a_mixture_active_params_equal_params():
    a = analysed("input 8 -> fc 4 relu -> fc 2")
    assert a.totals.active_params == a.totals.params == 8 * 4 + 4 + 4 * 2 + 2


def test_experts_mixtral_expert_block_gives_the_issue_figures_difference():
    # Mixtral-8x7B per layer: 8 SwiGLU experts of 3·4096·14336 weights, top 2, router 4096x8. An add of
    # two fc 14336 branches has SwiGLU's weights and products (the product itself is no MAC).
    spec = ("input 4096\nexperts 8 top=2 {\n  add( fc 14336 bias=off | fc 14336 bias=off )\n"
            "  fc 4096 bias=off\n}\n")
    a = analysed(spec)
    expert = 3 * 4096 * 14336
    assert a.totals.params == 8 * expert + 4096 * 8
    assert a.totals.active_params == 2 * expert + 4096 * 8
    assert a.totals.macs == 2 * expert + 4096 * 8  # one step: 2 experts' products and the router
    # 32 such layers: the issue's 46,702,792,704 params and 12,879,925,248 active differ by 6 idle experts
    assert 32 * (a.totals.params - a.totals.active_params) == 46_702_792_704 - 12_879_925_248


def test_experts_names_rows_and_repeats():
    g = compile_spec("input 6\nexperts 2 top=1 { fc 6 } x2 as m\nadd m\n", file="<test>")
    names = [n.name for n in g.nodes]
    assert names[:5] == ["input", "experts1.router", "experts1.expert1.fc1", "experts1.expert2.fc1", "experts1"]
    assert "experts2" in names and g.node("experts2").label == "m"
    assert {n.row for n in g.nodes[1:5]} == {"experts1"}
    assert [n.standby for n in g.nodes[1:5]] == [False, False, True, False]


@pytest.mark.parametrize("spec, words", [
    ("input 6\nexperts 4 top=5 { fc 6 }", ["top=K", "at most 4", "top=5"]),
    ("input 6\nexperts 0 { fc 6 }", ["at least 1 expert"]),
    ("input 6\nexperts 4 top=0 { fc 6 }", ["at least 1", "top=0"]),
    ("input 6\nexperts 4 balance=-0.5 { fc 6 }", ["balance=-0.5", ">= 0"]),
    ("input 6\nexperts 4 { fc 7 }", ["its input's shape 6", "into 7"]),
    ("input 6\nexperts 4 top=2", ["braces"]),
    ("input 6\nfc 6 { fc 6 }", ["only experts takes a block in braces"]),
    ("input 6\nexperts 4 { }", ["no steps"]),
    ("input 6\nexperts 4 topp=1 { fc 6 }", ["unknown option", "top"]),
    ("input 3@4x4\nexperts 4 { conv 3@3x3 pad=1 }", ["image 3@4x4", "tokens"]),
])
def test_experts_bad_values_are_located_errors(spec, words):
    fails(spec, 2, *words)


def test_experts_take_block_parameters_and_defaults():
    g = compile_spec("input seq 4 of 6\ndefault experts top=1\nblock moe(e, f) {\n  experts e { fc f relu -> fc 6 }\n}\n"
                     "moe(3, 8)\n", file="<test>")
    joined = g.node("moe1.experts1")
    assert (joined.attrs["experts"], joined.attrs["top"]) == (3, 1)
    assert g.node("moe1.experts1.expert3.fc1").out_shape == (4, 8)
    assert [n.standby for n in g.nodes if n.name.startswith("moe1.experts1.expert")] == [False] * 3 + [True] * 6


def test_experts_error_points_at_the_bad_value():
    with pytest.raises(DlcError) as err:
        compile_spec("input 6\nexperts 4 top=5 { fc 6 }", file="<test>")
    assert (err.value.pos.line, err.value.pos.col) == (2, 15)


# --- the math kinds of issue 28 -----------------------------------------------------------------

def test_softmax_along_another_axis():
    # 3@4x5 over the width (axis 2, or -1): still 3 FLOPs per element, 3*4*5*3 = 180
    for axis in ("2", "-1"):
        s = last(f"input 3@4x5\nsoftmax axis={axis}")
        assert s.node.attrs["axis"] == 2 and figures(s) == ((3, 4, 5), 0, 0, 0, 180)
    assert last("input 3@4x5\nsoftmax").node.attrs["axis"] == 0  # the channels, as before
    assert last("input seq 6 of 4\nsoftmax").node.attrs["axis"] == 1  # each step's features
    fails("input 3@4x5\nsoftmax axis=3", 2, "softmax axis must be one of 0..2 of 3@4x5", "received axis=3")
    fails("input 3@4x5\nsoftmax axis=same", 2, "axis takes a whole number")


def test_logsoftmax_four_flops_per_element():
    # exp, sum, log, subtract: fc 10 logsoftmax is 40; the alias and the axis as softmax's
    s = last("input 32\nfc 10 log_softmax")
    assert s.node.kind == "logsoftmax" and figures(s) == ((10,), 0, 0, 0, 40)
    assert last("input 3@4x5\nlogsoftmax axis=1").node.attrs["axis"] == 1


def test_softplus_one_flop_per_element():
    activation("softplus")


def test_softsign_one_flop_per_element():
    activation("softsign")


def test_exp_one_flop_per_element():
    activation("exp")


def test_sqrt_one_flop_per_element():
    activation("sqrt")


def test_abs_one_flop_per_element():
    activation("abs")


def test_neg_one_flop_per_element():
    activation("neg")


def test_clip_one_flop_per_element_with_either_bound():
    activation("clip", "min=-1 max=1")
    assert last("input 4\nclip max=6").node.attrs == {"min": -math.inf, "max": 6.0}
    fails("input 4\nclip min=2 max=1", 2, "clip min must be <= max (received min=2, max=1)")


def test_prelu_one_slope_or_one_per_channel():
    # one slope: 1 parameter; per channel of 64@8x8: 64; 1 FLOP per element as leaky
    s = last("input 3@8x8\nconv 64@3x3 pad=1 prelu")
    assert s.node.kind == "prelu" and figures(s) == ((64, 8, 8), 1, 0, 0, 64 * 8 * 8)
    s = last("input 3@8x8\nconv 64@3x3 pad=1 prelu channels")
    assert figures(s) == ((64, 8, 8), 64, 0, 0, 64 * 8 * 8) and rf(s) == (3, 3, 1)
    # in ONNX PRelu's layout: (C, 1, 1) against NCHW, (F,) for a vector, (D,) for each step of a sequence
    shapes = {spec: KINDS["prelu"].params({"channels": True}, [shape])["alpha"]
              for spec, shape in (("image", (64, 8, 8)), ("vector", (10,)), ("sequence", (5, 7)))}
    assert shapes == {"image": (64, 1, 1), "vector": (10,), "sequence": (7,)}
    assert KINDS["prelu"].tensors["alpha"] == Role("scale", constant=0.25)  # He et al.: 0.25, no decay


def test_shift_one_value_or_one_per_channel():
    # x + b: 1 parameter, or 4 for 4@3x3 with `channels`; 1 FLOP per element, the add
    assert figures(last("input 4@3x3\nshift")) == ((4, 3, 3), 1, 0, 0, 36)
    assert figures(last("input 4@3x3\nshift channels")) == ((4, 3, 3), 4, 0, 0, 36)
    assert KINDS["shift"].params({"channels": True}, [(4, 3, 3)]) == {"b": (4, 1, 1)}


def test_glu_halves_its_axis():
    # fc 128 -> glu: 64 features, 2 FLOPs per output element (the sigmoid and the product)
    s = last("input 32\nfc 128\nglu")
    assert figures(s) == ((64,), 0, 0, 0, 128)
    assert last("input 6@4x4\nglu").node.out_shape == (3, 4, 4)  # an image's channels
    assert last("input seq 6 of 7\nglu axis=0").node.out_shape == (3, 7)  # PyTorch's GLU(dim=1) on 6x7
    fails("input 5@4x4\nglu", 2, "glu halves axis 0 of 5@4x4, so its size must be even (received 5)")


def test_reduce_mean_or_sum_along_one_axis():
    # 2@3x4 over the height: 2x4 (a sequence), or 2@1x4 with keep; 1 FLOP per input element, 24
    s = last("input 2@3x4\nreduce axis=1")
    assert figures(s) == ((2, 4), 0, 0, 0, 24) and s.node.attrs["sum"] is False
    assert figures(last("input 2@3x4\nreduce sum axis=1 keep")) == ((2, 1, 4), 0, 0, 0, 24)
    assert last("input seq 5 of 8\nreduce").node.out_shape == (5,)  # each step's features, by default
    fails("input 8\nreduce", 2, "reduce over the only axis of 8 leaves no features: add `keep`")
    fails("input 2@3x4\nreduce mean sum", 2, "one of the flags `mean`")


# --- the elementwise merges of several inputs (issue 22) ------------------------------------------

def test_maximum_of_three_broadcasts_size_one_axes():
    # 2@3x4, 2@1x4 and 2@3x1 give 2@3x4; two comparisons per output element: 2 * 24 = 48 FLOPs
    s = last("input 2@3x4 as a\ninput 2@1x4 as b\ninput 2@3x1 as c\nmaximum a b")
    assert figures(s) == ((2, 3, 4), 0, 0, 0, 48) and s.node.inputs == ["c", "a", "b"]


def test_minimum_needs_one_rank():
    fails("input 2@3x4 as a\ninput 2 as b\nminimum a", 3,
          "minimum needs equal shapes, or 1 on an axis where they differ, got 2 and 2@3x4")


def test_pow_takes_the_current_tensor_to_the_power_of_the_other():
    s = last("input seq 3 of 4 as base\ninput seq 1 of 4 as e\npow base")
    assert figures(s) == ((3, 4), 0, 0, 0, 12) and s.node.inputs == ["e", "base"]


def test_sub_takes_two_inputs():
    fails("input 4 as a\ninput 4 as b\ninput 4 as c\nsub a b", 4, "sub takes two inputs, the current tensor and "
          "one more; got 3")


def test_div_of_equal_shapes():
    assert figures(last("input 6 as a\ninput 6 as b\ndiv a")) == ((6,), 0, 0, 0, 6)


def test_matmul_by_a_shared_matrix_counts_as_an_fc_without_weights():
    # 2x3 steps times a 3x5 matrix: 2x5, 3 MACs per output element (30), 2 FLOPs each (60), no params
    s = last("input 3x5 shared as w\ninput seq 2 of 3 as v -> matmul w")
    assert figures(s) == ((2, 5), 0, 0, 30, 60) and s.node.inputs == ["v", "w"]
    fails("input 4x5 shared as w\ninput seq 2 of 3 as v -> matmul w", 2,
          "matmul multiplies the features (last axis) of its input by a K x M matrix of the same K, got 2x3 and 4x5")


def test_every_kind_has_its_own_test():
    tested = {name.split("_")[1] for name in globals() if name.startswith("test_")}
    assert set(KINDS) - tested == set()


# --- Swin: windowed attention and patchmerge on a token grid ----------------------------------------

def test_windowed_attention_counts_its_windows_not_the_whole_grid():
    # Swin-T's first attention: 56x56 tokens of 96, 3 heads, 7x7 windows. Params: 4*96^2 + 4*96 = 37,248
    # and the bias table (2*7-1)^2 * 3 = 507: 37,755. MACs: projections 3136*4*96^2 = 115,605,504; each
    # token scores and sums over its window's 49 tokens, 2*3136*49*96 = 29,503,488: 145,108,992. A global
    # attention would count 2*3136^2*96 = 1,888,223,232 for the products, 64 times the windows' 29.5 M.
    # FLOPs: 2*MACs + bias adds 4*3136*96 = 1,204,224 + 4 per score (scale, softmax) 4*3*3136*49 =
    # 1,843,968 + the bias table's add, 1 per score, 460,992: 293,727,168; shifted, the mask adds 460,992.
    grid = "input 3@224x224\nconv 96@4x4/4 -> tokens\n"
    s = last(grid + "attention 3 window=7x7")
    assert figures(s) == ((3136, 96), 37_755, 0, 145_108_992, 293_727_168)
    assert s.node.attrs["shift"] == (0, 0) and s.node.attrs["grid"] == (56, 56)
    shifted = last(grid + "attention 3 window=7x7 shift=3")
    assert figures(shifted)[3:] == (145_108_992, 293_727_168 + 460_992) and shifted.node.attrs["shift"] == (3, 3)
    # a window as large as the grid's side does not shift along it (torchvision's rule): no mask
    whole = last("input 3@28x28\nconv 96@4x4/4 -> tokens\nattention 3 window=7x7 shift=3")
    assert whole.node.attrs["shift"] == (0, 0)


def test_patchmerge_halves_the_grid_that_the_kinds_keeping_the_steps_keep():
    # fc, layernorm, gelu, dropout and add keep a grid; patchmerge halves it and joins 4 tokens' features
    s = last("input 3@32x32\nconv 16@4x4/4 -> tokens -> layernorm -> fc 24 gelu -> dropout 0.1\n"
             "add( attention 2 window=4x4 | identity ) -> patchmerge -> layernorm -> fc 48 bias=off\n"
             "attention 4 window=2x2 shift=1")
    assert s.node.out_shape == (16, 48) and s.node.attrs["grid"] == (4, 4)
    merge = last("input 3@32x32\nconv 16@4x4/4 -> tokens -> patchmerge")
    assert figures(merge) == ((16, 64), 0, 0, 0, 0)


def test_windowed_attention_and_patchmerge_errors_point_at_the_fault():
    fails("input seq 16 of 8\nattention 2 window=2x2", 2, "window=2x2", "sequence without one", "tokens")
    fails("input 3@24x24\nconv 8@4x4/4 -> tokens\nattention 2 window=4x4", 3, "must tile the 6x6 token grid")
    fails("input 3@32x32\nconv 8@4x4/4 -> tokens\nattention 2 window=4x4 shift=4", 3, "0 <= N < 4", "shift=4")
    fails("input 3@32x32\nconv 8@4x4/4 -> tokens\nattention 2 window=4x4 causal", 3, "neither causal")
    fails("input 3@32x32\nconv 8@4x4/4 -> tokens\nattention 2 shift=1", 3, "window=HxW")
    fails("input 3@32x32\nconv 8@4x4/4 -> tokens\nattention 2 window=4", 3, "causal", "window=4x4")
    fails("input seq 16 of 8\npatchmerge", 2, "patchmerge", "sequence without one")
    fails("input 3@12x12\nconv 8@4x4/4 -> tokens -> patchmerge", 2, "even sides", "3x3")
    fails("input 3@32x32\nconv 8@4x4/4 -> tokens -> seqpool -> patchmerge", 2, "TxD")
# --- the kinds of today's vision networks (issue 21) -------------------------------------------

def test_hardsigmoid_elementwise():
    activation("hardsigmoid")


def test_hardswish_two_flops_per_element_as_silu():
    # x * relu6(x + 3) / 6: the gate and the product, 2 per element; 3@4x4 -> 96
    s = last("input 3@4x4\nconv 3@1x1 hardswish", "hardswish")
    assert figures(s) == ((3, 4, 4), 0, 0, 0, 96) and rf(s) == (1, 1, 1)


def test_layernorm_channels_convnext_stem():
    # ConvNeXt-T's stem: conv 96@4x4/4 on 3@224x224 gives 96@56x56, then LayerNorm2d over each pixel's 96
    # channels: gamma and beta, 2*96 = 192 params; FLOPs 7 per element and 2 per pixel: 7*96*56*56 + 2*56*56
    s = last("input 3@224x224\nconv 96@4x4/4\nlayernorm channels eps=1e-6")
    assert figures(s) == ((96, 56, 56), 192, 0, 0, 7 * 96 * 56 * 56 + 2 * 56 * 56) and rf(s) == (4, 4, 4)
    assert s.node.attrs["features"] == 96 and s.node.attrs["eps"] == 1e-6


def test_scale_convnext_layer_scale():
    # ConvNeXt's layer scale on 96@56x56: one gamma per channel, 96 params starting at 1e-6, stored
    # (96, 1, 1) to broadcast; 1 product per element = 301,056 FLOPs, no MACs
    s = last("input 96@56x56\nlayerscale init=1e-6")
    assert s.node.kind == "scale" and figures(s) == ((96, 56, 56), 96, 0, 0, 96 * 56 * 56)
    assert KINDS["scale"].params(s.node.attrs, [(96, 56, 56)]) == {"gamma": (96, 1, 1)}
    assert KINDS["scale"].tensors["gamma"].start(s.node.attrs) == 1e-6
    assert figures(last("input seq 5 of 8\nscale")) == ((5, 8), 8, 0, 0, 40)
    fails("input 8\nscale init=1e999", 2, "too large for a number")


def test_droppath_counts_nothing_and_checks_its_probability():
    s = last("input 96@56x56\nadd( conv 96@1x1 -> droppath 0.1 | identity )", "droppath")
    assert figures(s) == ((96, 56, 56), 0, 0, 0, 0) and s.node.attrs["p"] == 0.1
    fails("input 8\ndroppath 1", 2, "droppath probability must satisfy 0 <= P < 1")


def test_gap_keep_gives_c_at_1x1_for_torchvisions_squeeze_excite():
    # EfficientNet-B0's first SE on 32@112x112: gap keep -> 32@1x1, 1x1 convs to 8 and back to 32
    # (32*8 + 8 + 8*32 + 32 = 552 params, 256 + 256 MACs), times the image: 32*112*112 FLOPs, no MACs
    a = analysed("input 32@112x112\nmul( identity | gap keep -> conv 8@1x1 silu -> conv 32@1x1 sigmoid )")
    gap = [n for n in a.nodes if n.node.kind == "gap"][0]
    assert figures(gap) == ((32, 1, 1), 0, 0, 0, 32 * 112 * 112)
    assert figures(a.nodes[-1]) == ((32, 112, 112), 0, 0, 0, 32 * 112 * 112)
    assert a.totals.params == 552 and a.totals.macs == 512
    assert figures(last("input 4@10\ngmp keep")) == ((4, 1), 0, 0, 0, 40)
