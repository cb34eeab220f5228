"""The zoo reproduces its published figures: every specs/*.dlc against its paper or torchvision's tables.

Parameter counts must match exactly; MACs (what torchvision's tables and the papers call FLOPs or
mult-adds) to the precision they are published at. Where no source prints a figure, it is worked out
by hand in the comment beside the assertion.
"""

from __future__ import annotations

from functools import lru_cache

import pytest

from dlc.analysis import Analysis, analyse
from dlc.compile import compile_spec
from dlc.zoo import describe, zoo_names, zoo_path


@lru_cache(maxsize=None)
def zoo(name: str) -> Analysis:
    path = zoo_path(name)
    return analyse(compile_spec(path.read_text(), file=str(path)))


def nodes(name: str, kind: str) -> list:
    return [s for s in zoo(name).nodes if s.node.kind == kind]


def shapes(name: str, kind: str) -> list[tuple[int, ...]]:
    return [s.node.out_shape for s in nodes(name, kind)]


def rounds_to(value: int, published: str, unit: float) -> bool:
    """`value` / `unit`, rounded to as many decimals as `published` shows, equals `published`."""
    decimals = len(published.split(".")[1]) if "." in published else 0
    return round(value / unit, decimals) == float(published)


G, M = 10**9, 10**6

# name: (params, MACs as published, unit). torchvision's figures are its weights' `_meta` dicts
# ("num_params", and "_ops" in GFLOPS, which counts multiply-accumulates of convs and fcs), as printed
# in the model tables of its documentation (pytorch.org/vision/stable/models.html).
PUBLISHED = {
    "vgg11": (132_863_336, "7.609", G),  # torchvision VGG11_Weights.IMAGENET1K_V1
    "vgg16": (138_357_544, "15.47", G),  # torchvision VGG16_Weights.IMAGENET1K_V1
    "vgg19": (143_667_240, "19.632", G),  # torchvision VGG19_Weights.IMAGENET1K_V1
    "resnet18": (11_689_512, "1.814", G),  # torchvision ResNet18_Weights.IMAGENET1K_V1
    "resnet34": (21_797_672, "3.664", G),  # torchvision ResNet34_Weights.IMAGENET1K_V1
    "resnet50": (25_557_032, "4.089", G),  # torchvision ResNet50_Weights.IMAGENET1K_V1/V2
    "resnet101": (44_549_160, "7.801", G),  # torchvision ResNet101_Weights.IMAGENET1K_V1/V2
    "resnet152": (60_192_808, "11.514", G),  # torchvision ResNet152_Weights.IMAGENET1K_V1/V2
    "googlenet": (6_624_904, "1.498", G),  # torchvision GoogLeNet_Weights.IMAGENET1K_V1
    "mobilenet_v2": (3_504_872, "0.301", G),  # torchvision MobileNet_V2_Weights.IMAGENET1K_V1
    # Howard et al. 2017 (arXiv:1704.04861), Tables 6-8: 1.0 MobileNet-224, 569 million mult-adds,
    # 4.2 million parameters; Keras's MobileNet prints the exact 4,231,976 trainable parameters.
    "mobilenet_v1": (4_231_976, "569", M),
    "vit_b16": (86_567_656, "17.56", G),  # torchvision ViT_B_16_Weights.IMAGENET1K_V1
    "swin_t": (28_288_354, "4.49", G),  # torchvision Swin_T_Weights.IMAGENET1K_V1
    # issue 28: a volume net at 3@16x112x112 (torchvision is not installed here, so its published table)
    "r3d_18": (33_371_472, "40.697", G),  # torchvision R3D_18_Weights.KINETICS400_V1
    # issue 21, exact to the unit: torchvision's counts of its EfficientNet_B0 and ConvNeXt_Tiny weights ("_ops"
    # 0.386 and 4.5 GFLOPS, whose exact MACs the issue gives); MobileNetV3-Large's MACs are its plain-torch twin's
    # (tests/torch_models.py), counted by forward hooks in tests/onnx/test_onnx_torch.py (torchvision: 0.217)
    "efficientnet_b0": (5_288_548, "385814752", 1),  # torchvision EfficientNet_B0_Weights.IMAGENET1K_V1
    "convnext_tiny": (28_589_128, "4455531264", 1),  # torchvision ConvNeXt_Tiny_Weights.IMAGENET1K_V1
    "mobilenet_v3_large": (5_483_032, "216589760", 1),  # torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V1
}

# name: (params, MACs), both by hand from the layer tables in the comments below.
BY_HAND = {
    # Course table (single tower, 227x227 input):
    #   conv1 96*3*11*11 + 96 = 34,944        MACs 96*55*55*363      = 105,415,200
    #   conv2 256*96*5*5 + 256 = 614,656      MACs 256*27*27*2400    = 447,897,600
    #   conv3 384*256*9 + 384 = 885,120       MACs 384*13*13*2304    = 149,520,384
    #   conv4 384*384*9 + 384 = 1,327,488     MACs 384*13*13*3456    = 224,280,576
    #   conv5 256*384*9 + 256 = 884,992       MACs 256*13*13*3456    = 149,520,384
    #   fc6 9216*4096 + 4096 = 37,752,832     MACs 37,748,736
    #   fc7 4096*4096 + 4096 = 16,781,312     MACs 16,777,216
    #   fc8 4096*1000 + 1000 = 4,097,000      MACs 4,096,000
    #   total 62,378,344 params, 1,135,256,096 MACs
    "alexnet": (62_378_344, 1_135_256_096),
    # Zeiler & Fergus 2014, Fig. 3: AlexNet's layers with conv1 96@7x7/2 (96*3*49 + 96 = 14,208 params instead
    # of 34,944): 62,378,344 - 34,944 + 14,208 = 62,357,608. MACs: conv1 96*110*110*147 = 170,755,200,
    # conv2 256*26*26*2400 = 415,334,400, conv3-5 and fcs as AlexNet's (523,321,344 + 58,621,952).
    "zfnet": (62_357_608, 1_168_032_896),
    # LeNet-5 as in the course table: conv1 6*25 + 6 = 156, conv2 16*6*25 + 16 = 2,416, fc 400*120 + 120 = 48,120,
    # 120*84 + 84 = 10,164, 84*10 + 10 = 850; total 61,706. MACs 6*28*28*25 = 117,600, 16*10*10*150 = 240,000,
    # 48,000 + 10,080 + 840: 416,520, the low end of conventions.md's "416,520 to 448,662" LeNet-5 range.
    "lenet5": (61_706, 416_520),
    # Nielsen, "Neural Networks and Deep Learning", ch. 1: 784*30 + 30 + 30*10 + 10 = 23,860; MACs 23,520 + 300.
    "mlp_mnist": (23_860, 23_820),
    # 2-2-1: (2*2 + 2) + (2*1 + 1) = 9 params; 4 + 2 MACs.
    "xor": (9, 6),
    # M5 on a second of 8 kHz audio (issue 28): conv1 32*80 + 32 = 2,592 over (8000-80)/16 + 1 = 496 steps,
    # pooled to 124; conv2 32*32*3 + 32 = 3,104 (122 -> 30); conv3 64*32*3 + 64 = 6,208 (28 -> 7); conv4
    # 64*64*3 + 64 = 12,352 (5 -> 1); four bn 2*(32+32+64+64) = 384; fc 64*35 + 35 = 2,275: 26,915, torchaudio
    # tutorial's count. MACs 32*496*80 + 32*122*96 + 64*28*96 + 64*5*192 + 64*35.
    "m5_audio": (26_915, 32 * 496 * 80 + 32 * 122 * 96 + 64 * 28 * 96 + 64 * 5 * 192 + 64 * 35),
    # embed 20000*128 = 2,560,000; lstm 4*256*(128 + 256) + 8*256 = 395,264; fc 256*2 + 2 = 514.
    # MACs: 200 steps * 4*256*384 = 78,643,200 for the lstm, 512 for the fc.
    "lstm_text": (2_955_778, 78_643_712),
    # GPT-2 small (issue 11, docs/language.md): Hugging Face's GPT2LMHeadModel("gpt2") has 124,439,808 parameters, the
    # output layer tied to the token table. By hand: embed 50257*768 = 38,597,376, positions 1024*768 = 786,432,
    # per block 2*1,536 + (4*768^2 + 4*768) + (768*3072 + 3072) + (3072*768 + 768) = 7,087,872 (x12), layernorm
    # 1,536. MACs at T=1024, per block 1024*4*768^2 + 2*1024^2*768 + 2*1024*768*3072 = 8,858,370,048 (x12),
    # the output 1024*768*50257 = 39,523,713,024: 145,824,153,600, FlopCounterMode's figure divided by two.
    "gpt2_small": (38_597_376 + 786_432 + 12 * 7_087_872 + 1_536,
                   12 * (1024 * 4 * 768**2 + 2 * 1024**2 * 768 + 2 * 1024 * 768 * 3072) + 1024 * 768 * 50257),
    # Llama 3 8B (specs/llama3_8b.dlc): LlamaForCausalLM's 8,030,261,248 parameters. By hand: embed and head
    # 128256*4096 each, per layer 2*4096 (rmsnorms) + 2*4096^2 + 2*4096*1024 (attention, kv=8) + 3*4096*14336
    # (SwiGLU), the final rmsnorm 4096. MACs at 2048 tokens: every weight that multiplies, once per token
    # (the embedding's lookup excepted), and attention's 2*T^2*D per layer, causal counted in full.
    "llama3_8b": (2 * 128256 * 4096 + 32 * (2 * 4096 + 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 4096,
                  2048 * (32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096)
                  + 32 * 2 * 2048**2 * 4096),
    # Mixtral 8x7B (specs/mixtral_8x7b.dlc): MixtralForCausalLM's 46,702,792,704 parameters: as Llama's layers
    # but 8 SwiGLU experts and a 4096x8 router in place of the one feed-forward, vocabulary 32000. MACs per
    # token: the router and the 2 routed experts, the attention as Llama's.
    "mixtral_8x7b": (2 * 32000 * 4096 + 32 * (2 * 4096 + 2 * 4096**2 + 2 * 4096 * 1024 + 4096 * 8
                                             + 8 * 3 * 4096 * 14336) + 4096,
                     2048 * (32 * (2 * 4096**2 + 2 * 4096 * 1024 + 4096 * 8 + 2 * 3 * 4096 * 14336) + 32000 * 4096)
                     + 32 * 2 * 2048**2 * 4096),
    # The small Llama-style character model (specs/llama_char.dlc): embed 128*64 and the head 64*128; per layer
    # 2*64 (rmsnorms) + 2*64^2 + 2*64*32 (attention, kv=2 of 4 heads of 16) + 3*64*192 (SwiGLU); the final rmsnorm
    # 64. MACs at 64 steps: the weights that multiply once per step, and attention's 2*T^2*D per layer.
    "llama_char": (128 * 64 + 4 * (2 * 64 + 2 * 64**2 + 2 * 64 * 32 + 3 * 64 * 192) + 64 + 64 * 128,
                   64 * (4 * (2 * 64**2 + 2 * 64 * 32 + 3 * 64 * 192) + 64 * 128) + 4 * 2 * 64**2 * 64),
    # The two-block encoder of issue 11's reverse task (D=64, 4 heads, 12 steps over 16 tokens): embed 16*64,
    # positions 12*64, per block 2*128 + (4*64^2 + 4*64) + (64*256 + 256) + (256*64 + 64) = 49,984, layernorm
    # 128, output 64*16 + 16. MACs per block 12*4*64^2 + 2*12^2*64 + 2*12*64*256 = 608,256, output 12*64*16.
    "transformer_reverse": (1_024 + 768 + 2 * 49_984 + 128 + 1_040, 2 * 608_256 + 12_288),
    # The small BERT-style encoder of issue 22's pair task (D=32, 2 heads, 8 steps over 16 tokens): embeds of ids
    # 16*32 and token types 2*32, positions 8*32, per layer 2*64 + (4*32^2 + 4*32) + (32*64 + 64) + (64*32 + 32),
    # layernorm 64, classifier 32*2 + 2. MACs per layer 8*4*32^2 + 2*8^2*32 + 2*8*32*64, classifier 32*2.
    "bert_pairs": (16 * 32 + 2 * 32 + 8 * 32 + 2 * (2 * 64 + 4 * 32**2 + 4 * 32 + 32 * 64 + 64 + 64 * 32 + 32)
                   + 64 + 66, 2 * (8 * 4 * 32**2 + 2 * 8**2 * 32 + 2 * 8 * 32 * 64) + 32 * 2),
    # U-Net (Ronneberger et al. 2015, Fig. 1), 3x3 convs with bias, pad=same so the count is the paper's:
    #   down: 1->64 640, 64->64 36,928, 64->128 73,856, 128->128 147,584, 128->256 295,168, 256->256 590,080,
    #         256->512 1,180,160, 512->512 2,359,808, 512->1024 4,719,616, 1024->1024 9,438,208 (18,842,048)
    #   up:   upconv 1024->512 2x2 1024*512*4 + 512 = 2,097,664, 1024->512 4,719,104, 512->512 2,359,808,
    #         upconv 524,544, 512->256 1,179,904, 256->256 590,080, upconv 131,200, 256->128 295,040,
    #         128->128 147,584, upconv 32,832, 128->64 73,792, 64->64 36,928, 1x1 64->2 130 (12,188,610)
    # MACs at 64x64 (level side 64, 32, 16, 8, 4): each 3x3 conv C_out*C_in*9*side^2, each upconv
    # C_in*side_in^2*C_out*4, the 1x1 2*64*64^2:
    #   64^2*(64*1 + 64*64 + 64*128 + 64*64)*9 + 32^2*(128*64 + 128*128 + 128*256 + 128*128)*9
    #   + 16^2*(256*128 + 256*256 + 256*512 + 256*256)*9 + 8^2*(512*256 + 512*512 + 512*1024 + 512*512)*9
    #   + 4^2*(1024*512 + 1024*1024)*9 + 4*(1024*4^2*512 + 512*8^2*256 + 256*16^2*128 + 128*32^2*64)
    #   + 2*64*64^2
    "unet": (31_030_658, 9 * (64**2 * (64 + 4096 + 8192 + 4096) + 32**2 * (8192 + 16384 + 32768 + 16384)
                              + 16**2 * (32768 + 65536 + 131072 + 65536)
                              + 8**2 * (131072 + 262144 + 524288 + 262144)
                              + 4**2 * (524288 + 1048576))
             + 4 * (1024 * 16 * 512 + 512 * 64 * 256 + 256 * 256 * 128 + 128 * 1024 * 64) + 2 * 64 * 64**2),
    # issue 22. BERT-base: Hugging Face's BertModel("bert-base-uncased").num_parameters(), 109,482,240 with the
    # pooler: token table 30522*768, 512 positions and 2 token types of 768, a layernorm, 12 layers of 7,087,872
    # (GPT-2's block), the pooler 768*768 + 768. MACs at 128 tokens: per layer 128*4*768^2 + 2*128^2*768 +
    # 2*128*768*3072, the pooler 768^2 on the first token.
    "bert_base": (30522 * 768 + 512 * 768 + 2 * 768 + 1_536 + 12 * 7_087_872 + 590_592,
                  12 * (128 * 4 * 768**2 + 2 * 128**2 * 768 + 2 * 128 * 768 * 3072) + 768**2),
    # Whisper tiny's encoder (the spec's header): 18,468,864,000 MACs for 80x3000, the issue's figure; params by
    # hand, 7,632,384 as openai/whisper: every projection with its bias but the keys' (4*384^2 + 3*384 a layer).
    "whisper_tiny_encoder": (92_544 + 442_752 + 4 * (2 * 768 + 4 * 384**2 + 3 * 384 + 2 * 384 * 1536 + 1536 + 384)
                             + 768,
                             384 * 3000 * 80 * 3 + 384 * 1500 * 384 * 3
                             + 4 * (1500 * 4 * 384**2 + 2 * 1500**2 * 384 + 2 * 1500 * 384 * 1536)),
    # The Stable Diffusion block at a 64x64 latent (the spec's header; tests/torch/test_zoo_against_torch.py
    # checks the same rules against PyTorch's counts of diffusers' layers).
    "sd_block": (2_255_040 + 2_546_240,
                 2 * 320 * 4096 * 2880 + 1280 * 320 + 2 * 4096 * 320**2
                 + 4 * 4096 * 320**2 + 2 * 4096**2 * 320
                 + 2 * 4096 * 320**2 + 2 * 77 * 768 * 320 + 2 * 4096 * 77 * 320
                 + 4096 * (320 * 2560 + 1280 * 320)),
}


def test_bert_whisper_and_the_sd_block_as_the_issue_counts_them():
    # issue 22's figures, exactly
    assert (zoo("bert_base").totals.params, zoo("bert_base").totals.macs) == (109_482_240, 11_174_215_680)
    assert (zoo("whisper_tiny_encoder").totals.params, zoo("whisper_tiny_encoder").totals.macs) == \
        (7_632_384, 18_468_864_000)
    assert (zoo("sd_block").totals.params, zoo("sd_block").totals.macs) == (4_801_280, 26_915_880_960)
    # Transformer2DModel's output: the tokens laid back out as the latent's 320@64x64, the latent added
    sd = zoo("sd_block").graph
    assert sd.output.out_shape == (320, 64, 64)
    assert [n.kind for n in sd.nodes if n.kind in ("image", "conv")][-2:] == ["image", "conv"]
    # BERT reads three inputs, its mask in every layer's attention; Whisper's stem is two 1-D convs
    bert = zoo("bert_base").graph
    assert [(n.name, n.out_shape, n.dtype) for n in bert.inputs] == [
        ("types", (128,), "int64"), ("mask", (128,), "int64"), ("ids", (128,), "int64")]
    assert [n.attrs["mask"] for n in bert.nodes if n.kind == "attention"] == ["mask"] * 12
    # and ends at BertModel's two outputs: the sequence output and the pooled output
    assert [(label, bert.node(name).out_shape) for label, name in bert.output_labels.items()] == [
        ("sequence", (128, 768)), ("pooled", (768,))]
    assert shapes("whisper_tiny_encoder", "conv") == [(384, 3000), (384, 1500)]
    assert shapes("whisper_tiny_encoder", "tokens") == [(1500, 384)]
    cross = [s for s in nodes("sd_block", "attention") if s.node.attrs["from"] == "text"]
    assert len(cross) == 1 and cross[0].params == 2 * 320**2 + 2 * 768 * 320


def test_every_zoo_spec_is_checked_against_a_source():
    assert set(zoo_names()) == set(PUBLISHED) | set(BY_HAND)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_params_and_macs(name):
    params, macs, unit = PUBLISHED[name]
    t = zoo(name).totals
    assert t.params == params
    assert rounds_to(t.macs, macs, unit), (t.macs, macs)


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_hand_derived_params_and_macs(name):
    t = zoo(name).totals
    assert (t.params, t.macs) == BY_HAND[name]


def test_torchvision_table_roundings():
    # The model tables round "GFLOPS" to two decimals: VGG-16 15.47, ResNet-18 1.81, ResNet-50 4.09,
    # ResNet-152 11.51, MobileNet v2 0.30 (and VGG-11 7.61, VGG-19 19.63, ResNet-34 3.66, ResNet-101 7.80,
    # GoogLeNet 1.50).
    table = {"vgg16": "15.47", "resnet18": "1.81", "resnet50": "4.09", "resnet152": "11.51",
             "mobilenet_v2": "0.30", "vgg11": "7.61", "vgg19": "19.63", "resnet34": "3.66",
             "resnet101": "7.80", "googlenet": "1.50"}
    for name, gmacs in table.items():
        assert rounds_to(zoo(name).totals.macs, gmacs, G), name


@pytest.mark.parametrize("name", sorted(set(PUBLISHED) | set(BY_HAND)))
def test_every_spec_names_its_source_and_figures(name):
    lines = zoo_path(name).read_text().splitlines()
    assert lines[0].startswith("# ") and describe(zoo_path(name)) == lines[0][2:]
    # A paper (a year, and an arXiv id where there is one) or a book in the first line, then the figures.
    assert any(str(year) in lines[0] for year in range(1960, 2030))
    assert lines[1].startswith("# Reproduces")


def test_llama_and_mixtral_as_published():
    # issue 19's figures: Llama-3-8B 8,030,261,248 params and at 2048 tokens 16,469,052,096,512 MACs, of which
    # 1,099,511,627,776 in attention's scores and weighted sums; Mixtral-8x7B 46,702,792,704 params and
    # 12,879,925,248 active (router, 2 of 8 experts, everything outside the mixtures)
    llama = zoo("llama3_8b")
    assert (llama.totals.params, llama.totals.macs) == (8_030_261_248, 16_469_052_096_512)
    assert sum(s.macs for s in llama.nodes if s.node.kind == "attention") - 2048 * 32 * (
        2 * 4096**2 + 2 * 4096 * 1024) == 1_099_511_627_776
    assert all(s.node.attrs["kv"] == 8 and s.node.attrs["rope"] == 500000 for s in nodes("llama3_8b", "attention"))
    mixtral = zoo("mixtral_8x7b").totals
    assert (mixtral.params, mixtral.active_params) == (46_702_792_704, 12_879_925_248)


def test_alexnet_course_table_rows():
    # Course notes: conv1 on 3@227x227 gives 96@55x55 with 34,944 params and 105.4 M MACs; the first maxpool
    # gives 96@27x27 at k*k FLOPs per output, 96*27*27*9 = 629,856 = 0.63 M (conventions.md).
    conv1, pool1 = nodes("alexnet", "conv")[0], nodes("alexnet", "maxpool")[0]
    assert conv1.node.out_shape == (96, 55, 55) and conv1.params == 34_944
    assert rounds_to(conv1.macs, "105.4", M)
    assert pool1.node.out_shape == (96, 27, 27) and pool1.flops == 629_856 and rounds_to(pool1.flops, "0.63", M)
    assert shapes("alexnet", "maxpool") == [(96, 27, 27), (256, 13, 13), (256, 6, 6)]
    assert shapes("alexnet", "flatten") == [(9216,)]


def test_zfnet_map_sizes_of_figure_3():
    # Zeiler & Fergus 2014, Fig. 3: 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 13 -> 6.
    assert shapes("zfnet", "conv") == [(96, 110, 110), (256, 26, 26), (384, 13, 13), (384, 13, 13),
                                       (256, 13, 13)]
    assert shapes("zfnet", "maxpool") == [(96, 55, 55), (256, 13, 13), (256, 6, 6)]


def test_lenet5_layers_as_the_paper_counts_them():
    # LeCun et al. 1998, Section II.B: C1 has 156 trainable parameters and 122,304 connections
    # (6*28*28*(25 + 1): the MACs plus one bias add per output); F6 has 10,164 trainable parameters.
    c1, c3 = nodes("lenet5", "conv")
    assert c1.node.out_shape == (6, 28, 28) and c1.params == 156
    assert c1.macs + c1.activations == 122_304
    assert c3.node.out_shape == (16, 10, 10)
    assert [s.params for s in nodes("lenet5", "fc")] == [48_120, 10_164, 850]
    assert shapes("lenet5", "avgpool") == [(6, 14, 14), (16, 5, 5)]


def test_vgg16_stage_outputs():
    # Simonyan & Zisserman 2015, Table 1 (configuration D): five stages end at 112, 56, 28, 14 and 7.
    assert shapes("vgg16", "maxpool") == [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14),
                                          (512, 7, 7)]
    assert len(nodes("vgg11", "conv")) == 8 and len(nodes("vgg16", "conv")) == 13
    assert len(nodes("vgg19", "conv")) == 16


def test_resnet50_with_keras_non_trainable_statistics():
    # Keras's ResNet50 summary: Non-trainable params 53,120 (bn running mean and variance); with conv biases
    # Keras totals 25,636,712, and without them (as torchvision) 25,557,032 + 53,120 = 25,610,152
    # (conventions.md).
    t = zoo("resnet50").totals
    assert t.non_trainable == 53_120
    assert t.params + t.non_trainable == 25_610_152


def test_resnet_depths_and_stage_outputs():
    # He et al. 2016, Table 1: the weighted layers (convs on the main path and the fc) number 18, 34, 50,
    # 101 and 152; the projection shortcuts (one per stage that changes the shape: 3 for the basic-block nets,
    # 4 for the bottleneck ones) are not counted.
    for name, depth, projections in [("resnet18", 18, 3), ("resnet34", 34, 3), ("resnet50", 50, 4),
                                     ("resnet101", 101, 4), ("resnet152", 152, 4)]:
        assert len(nodes(name, "conv")) + len(nodes(name, "fc")) == depth + projections, name
    assert shapes("resnet50", "add")[-1] == (2048, 7, 7)
    assert shapes("resnet18", "add")[-1] == (512, 7, 7)


def test_googlenet_uses_torchvision_3x3_branch():
    # torchvision's "5x5" branch is a 3x3 conv. A real 5x5 would add c1*c2*(25 - 9) weights per module:
    # 16 * (16*32 + 32*96 + 16*48 + 24*64 + 24*64 + 32*64 + 32*128 + 32*128 + 48*128) = 16 * 23,808 = 380,928,
    # so 7,005,832 params: not the published 6,624,904.
    text = zoo_path("googlenet").read_text()
    assert "conv c2@3x3 pad=1" in text
    five = analyse(compile_spec(text.replace("conv c2@3x3 pad=1", "conv c2@5x5 pad=2"), file="googlenet5x5"))
    assert five.totals.params == 6_624_904 + 380_928
    # Szegedy et al. 2015, Table 1: 28x28 after 3a/3b, 14x14 after 4a-4e, 7x7 after 5a/5b.
    assert [s[0] for s in shapes("googlenet", "concat")] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert shapes("googlenet", "concat")[1][1:] == (28, 28) and shapes("googlenet", "concat")[-1][1:] == (7, 7)
    assert all(s.node.attrs["eps"] == 0.001 for s in nodes("googlenet", "bn"))


def test_mobilenet_v1_table_1_and_keras_statistics():
    # Howard et al. 2017, Table 1: 28 layers counting depthwise and pointwise separately (27 convs + fc);
    # Keras's MobileNet: 21,888 non-trainable bn statistics.
    assert len(nodes("mobilenet_v1", "conv")) + len(nodes("mobilenet_v1", "dwconv")) == 27
    assert zoo("mobilenet_v1").totals.non_trainable == 21_888
    assert shapes("mobilenet_v1", "gap") == [(1024,)]


def test_mobilenet_v2_table_2_rows():
    # Sandler et al. 2018, Table 2: 17 bottlenecks (n = 1+2+3+4+3+3+1), residual adds in the repeats only
    # (1+2+3+2+2 = 10), ending at 320@7x7 before the 1280-channel 1x1.
    assert len(nodes("mobilenet_v2", "dwconv")) == 17
    assert len(nodes("mobilenet_v2", "add")) == 10
    assert shapes("mobilenet_v2", "conv")[-2:] == [(320, 7, 7), (1280, 7, 7)]


def test_gpt2_and_vit_as_written_in_the_language_guide():
    # docs/language.md's figures: 124,439,808 and 86,567,656 parameters; 145,824,153,600 and 17,563,828,224 MACs.
    assert (zoo("gpt2_small").totals.params, zoo("gpt2_small").totals.macs) == (124_439_808, 145_824_153_600)
    assert (zoo("vit_b16").totals.params, zoo("vit_b16").totals.macs) == (86_567_656, 17_563_828_224)
    # Radford et al. 2019, Table 2: the smallest model has 12 layers of width 768; 1024 tokens of context
    assert len(nodes("gpt2_small", "attention")) == 12 and shapes("gpt2_small", "embed") == [(1024, 768)]
    assert all(s.node.attrs["causal"] and s.node.attrs["heads"] == 12 for s in nodes("gpt2_small", "attention"))
    # Dosovitskiy et al. 2021, Table 1: ViT-Base has 12 layers, hidden size 768, MLP 3072, 12 heads;
    # 224/16 = 14 patches a side, 196 + the class token = 197 steps
    assert shapes("vit_b16", "attention") == [(197, 768)] * 12
    assert shapes("vit_b16", "fc")[:2] == [(197, 3072), (197, 768)]


def test_swin_t_counts_what_a_plain_torch_twin_of_torchvisions_computes():
    # tests/torch_models.py's Swin-T, layer for layer as torchvision builds it, on the meta device: its
    # parameters, and torch's own FLOP counter over its convolution and every product (the linear
    # layers, and the windows' Q·Kᵀ and weights·V as batched products), halved to MACs
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    import torch_models

    with torch.device("meta"):
        twin = torch_models.swin_t().eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            twin(torch.zeros(1, 3, 224, 224))
    swin = zoo("swin_t")
    assert sum(p.numel() for p in twin.parameters()) == swin.totals.params == 28_288_354
    assert counter.get_total_flops() // 2 == swin.totals.macs == 4_490_566_656
    # Liu et al. 2021, Section 3.3: Swin-T is C = 96, layer numbers {2, 2, 6, 2}, window M = 7, and the
    # stages' grids are 56, 28, 14 and 7 tokens a side
    attention = nodes("swin_t", "attention")
    assert [s.node.attrs["grid"][0] for s in attention] == [56] * 2 + [28] * 2 + [14] * 6 + [7] * 2
    assert {s.node.attrs["window"] for s in attention} == {(7, 7)}
    assert [s.node.attrs["shift"] for s in attention[-2:]] == [(0, 0), (0, 0)]  # 7x7 windows span the 7x7 grid


def test_unet_has_23_convolutional_layers():
    # Ronneberger et al. 2015, Section 2: "In total the network has 23 convolutional layers."
    assert len(nodes("unet", "conv")) + len(nodes("unet", "upconv")) == 23
    assert zoo("unet").graph.output.out_shape == (2, 64, 64)
    assert shapes("unet", "concat") == [(1024, 8, 8), (512, 16, 16), (256, 32, 32), (128, 64, 64)]


def test_nielsen_train_statement_reproduces_the_book():
    # Chapter 1: net.SGD(training_data, 30, 10, 3.0) with the quadratic cost and N(0, 1) initial weights.
    train = zoo("mlp_mnist").graph.train
    assert {k: train[k] for k in ("loss", "optimizer", "lr", "batch", "epochs")} == \
        {"loss": "mse", "optimizer": "sgd", "lr": 3.0, "batch": 10, "epochs": 30}
    assert (train["init"], train["init_std"]) == ("gaussian", 1.0)


@pytest.mark.parametrize("name", sorted(set(PUBLISHED) | set(BY_HAND) - {"mlp_mnist", "xor", "unet", "bert_base",
                                                                          "whisper_tiny_encoder", "sd_block"}))
def test_classifiers_end_in_softmax_and_say_how_to_train(name):
    a = zoo(name)
    assert a.graph.output.kind == "softmax"
    assert a.graph.train.get("loss") == "xent"


def test_todays_vision_networks_are_written_with_their_own_kinds():
    # issue 21: squeeze-and-excite is a real product (gap keep and 1x1 convs, as torchvision writes it), ConvNeXt's
    # norm is over each pixel's channels and its layer scale starts at 1e-6, its 18 blocks drop their branch with
    # probability 0.1 * i / 17 and EfficientNet's 9 residual blocks 0.2 * i / 16
    assert len(nodes("efficientnet_b0", "mul")) == 16 and len(nodes("mobilenet_v3_large", "mul")) == 8
    assert all(s.node.attrs["keep"] for s in nodes("efficientnet_b0", "gap")[:-1])
    assert {s.node.out_shape[1:] for s in nodes("efficientnet_b0", "gap")[:-1]} == {(1, 1)}
    # two in each of the 9 HS blocks (expansion, depthwise), the stem, the last conv and the classifier
    assert len(nodes("mobilenet_v3_large", "hardswish")) == 2 * 9 + 3
    norms = nodes("convnext_tiny", "layernorm")
    assert sum(s.node.attrs["channels"] for s in norms) == 1 + 18 + 3 and norms[-1].node.out_shape == (768,)
    assert {s.node.attrs["init"] for s in nodes("convnext_tiny", "scale")} == {1e-6}
    assert [round(s.node.attrs["p"] * 17 / 0.1, 4) for s in nodes("convnext_tiny", "droppath")] == list(range(18))
    assert [round(s.node.attrs["p"] * 16 / 0.2, 4) for s in nodes("efficientnet_b0", "droppath")] == \
        [2, 4, 6, 7, 9, 10, 12, 13, 14]
