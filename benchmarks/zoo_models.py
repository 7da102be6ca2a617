"""The models of the zoo (benchmarks/zoo.py): by name, how to build each one and its inputs.

Every model is built with random weights (nothing is downloaded): torchvision with weights=None
(and weights_backbone=None), timm with pretrained=False, Hugging Face transformers from small
config objects. Names are "<family>.<model>": tv.resnet18, timm.resnet18, hf.bert, nn.lstm.

A model that does not take tensors and return tensors (or tuples/lists/dicts of them) gets the
thinnest wrapper that does; WRAPPERS says, per wrapper, what a user needs to write.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

FAMILIES = ("torchvision", "timm", "transformers", "nn")
SIZE_LIMIT = 60_000_000  # parameters; larger models are listed as skipped by size

# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Floats:
    """A float32 tensor of shape (batch, *shape), values from torch.randn."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class TokenIds:
    """int64 token ids of shape (batch, length), drawn uniformly from [0, vocab)."""

    length: int
    vocab: int


@dataclass(frozen=True)
class Mask:
    """An int64 attention mask of ones, shape (batch, length)."""

    length: int


def make_inputs(kinds: tuple, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Fresh inputs of the given kinds at `batch` (same seed, same tensors)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for kind in kinds:
        if isinstance(kind, Floats):
            tensors.append(torch.randn((batch, *kind.shape), generator=generator))
        elif isinstance(kind, TokenIds):
            tensors.append(torch.randint(0, kind.vocab, (batch, kind.length), generator=generator))
        elif isinstance(kind, Mask):
            tensors.append(torch.ones(batch, kind.length, dtype=torch.long))
        else:
            raise TypeError(f"unknown input kind {kind!r}")
    return tuple(tensors)


def describe_inputs(kinds: tuple) -> str:
    parts = []
    for kind in kinds:
        if isinstance(kind, Floats):
            parts.append("x".join(str(s) for s in kind.shape))
        elif isinstance(kind, TokenIds):
            parts.append(f"ids[{kind.length}]<{kind.vocab}")
        else:
            parts.append(f"mask[{kind.length}]")
    return ", ".join(parts)


@dataclass
class ModelSpec:
    name: str  # "<family prefix>.<model>"
    family: str  # one of FAMILIES
    group: str  # torchvision: classification/segmentation/detection; timm: its module; else the kind
    build: Callable[[], nn.Module]  # random weights; the caller seeds and calls .eval()
    inputs: tuple  # Floats / TokenIds / Mask per input, without the batch dim
    wrapper: str | None = None  # a key of WRAPPERS, when the model needs one
    notes: list[str] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- wrappers


class DetectionWrapper(nn.Module):
    """torchvision detectors take a list of 3-d images and return List[Dict[str, Tensor]] (boxes,
    labels, scores, ...); scripted, they return (losses, detections). This takes a batched 4-d
    tensor and returns the detections in both cases."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        outputs = self.model(list(images.unbind(0)))
        if torch.jit.is_scripting():
            return outputs[1]
        else:
            return outputs


class TextWrapper(nn.Module):
    """(input_ids, attention_mask) -> the model's tuple output (return_dict=False)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)


class CausalLMWrapper(TextWrapper):
    """(input_ids, attention_mask) -> (logits,) of a decoder, without the KV cache."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=False)


class PixelWrapper(TextWrapper):
    """pixel_values -> the model's tuple output (return_dict=False)."""

    def forward(self, pixel_values: torch.Tensor):
        return self.model(pixel_values=pixel_values, return_dict=False)


class AudioWrapper(TextWrapper):
    """input_features (log-mel, batch x mels x frames) -> the encoder's tuple output."""

    def forward(self, input_features: torch.Tensor):
        return self.model(input_features=input_features, return_dict=False)


class TokenTransformerEncoder(nn.Module):
    """Token ids -> nn.Embedding -> nn.TransformerEncoder (the nn.transformer_encoder model itself)."""

    def __init__(self, vocab: int = 1000, d_model: int = 256, heads: int = 4, layers: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=4 * d_model, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(tokens))


WRAPPERS = {
    "DetectionWrapper": (
        DetectionWrapper,
        "torchvision detection models: `forward(images: Tensor) -> list[dict[str, Tensor]]` calls "
        "`self.model(list(images.unbind(0)))` and returns the detections (`outputs[1]` when scripted, "
        "since scripted detectors return `(losses, detections)`).",
    ),
    "TextWrapper": (
        TextWrapper,
        "encoders (BERT, DistilBERT, RoBERTa, T5 encoder, CLIP text): `forward(input_ids, attention_mask)` "
        "returns `self.model(input_ids=..., attention_mask=..., return_dict=False)`.",
    ),
    "CausalLMWrapper": (
        CausalLMWrapper,
        "decoders (GPT-2, Llama, Mistral, Qwen2): the same with `use_cache=False` (config and call), "
        "so the output is `(logits,)` without a KV cache object.",
    ),
    "PixelWrapper": (
        PixelWrapper,
        "vision transformers (ViT, CLIP vision): `forward(pixel_values)` returns "
        "`self.model(pixel_values=..., return_dict=False)`.",
    ),
    "AudioWrapper": (
        AudioWrapper,
        "Whisper encoder: `forward(input_features)` returns `self.model(input_features=..., return_dict=False)`.",
    ),
}

# ------------------------------------------------------------------------------------------ torchvision

TV_CLASSIFICATION_SIZE = {"inception_v3": 299}
TV_DETECTION_SIZE = 320
TV_SEGMENTATION_SIZE = 224


def _tv_classification(name: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def _tv_segmentation(name: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None, weights_backbone=None)


def _tv_detection(name: str) -> nn.Module:
    import torchvision

    options = {"weights": None, "weights_backbone": None}
    if not name.startswith("ssd"):  # SSD models have their size built in
        options.update(min_size=TV_DETECTION_SIZE, max_size=TV_DETECTION_SIZE)
    return DetectionWrapper(torchvision.models.get_model(name, **options))


def torchvision_specs() -> list[ModelSpec]:
    import torchvision.models as tvm

    specs = []
    for name in tvm.list_models(module=tvm):
        size = TV_CLASSIFICATION_SIZE.get(name, 224)
        build = functools.partial(_tv_classification, name)
        specs.append(ModelSpec(f"tv.{name}", "torchvision", "classification", build, (Floats((3, size, size)),)))
    for name in tvm.list_models(module=tvm.segmentation):
        size = TV_SEGMENTATION_SIZE
        build = functools.partial(_tv_segmentation, name)
        specs.append(ModelSpec(f"tv.{name}", "torchvision", "segmentation", build, (Floats((3, size, size)),)))
    for name in tvm.list_models(module=tvm.detection):
        size = TV_DETECTION_SIZE
        notes = [] if name.startswith("ssd") else [f"min_size=max_size={size}"]
        build = functools.partial(_tv_detection, name)
        inputs = (Floats((3, size, size)),)
        specs.append(ModelSpec(f"tv.{name}", "torchvision", "detection", build, inputs, "DetectionWrapper", notes))
    return specs


# ------------------------------------------------------------------------------------------------ timm

TIMM_MODELS = """
resnet18 resnet50 resnext26ts seresnext26d_32x4d efficientnet_b0 efficientnetv2_rw_t mobilenetv3_small_100
mobilenetv3_large_100 mobilenetv4_conv_small convnext_atto convnextv2_atto regnety_002 regnetx_002 densenet121
inception_v3 inception_v4 vit_tiny_patch16_224 deit_tiny_patch16_224 swin_tiny_patch4_window7_224 mobilevit_xxs
levit_128s mixer_s16_224 poolformer_s12 efficientformer_l1 fastvit_t8 ghostnet_100 dla34 dpn68 hrnet_w18_small
cspresnet50 cspdarknet53 dm_nfnet_f0 nf_resnet26 res2net50_26w_4s repvgg_a0 rexnet_100 tinynet_a mnasnet_100
hardcorenas_a lcnet_050 edgenext_xx_small coat_lite_tiny crossvit_tiny_240 pit_ti_224 tnt_s_patch16_224
xcit_nano_12_p16_224 maxvit_nano_rw_256 coatnet_nano_rw_224 efficientvit_m0 gcvit_xxtiny twins_svt_small
""".split()


@functools.cache
def _timm_modules() -> dict[str, str]:
    import timm

    return {model: module for module in timm.list_modules() for model in timm.list_models(module=module)}


def _timm_model(name: str) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False)


def timm_specs() -> list[ModelSpec]:
    import timm

    available = set(timm.list_models())
    specs = []
    for name in TIMM_MODELS:
        if name not in available:
            raise SystemExit(f"timm {timm.__version__} has no model '{name}'; replace it in TIMM_MODELS")
        size = tuple(timm.get_pretrained_cfg(name).input_size)
        build = functools.partial(_timm_model, name)
        specs.append(ModelSpec(f"timm.{name}", "timm", _timm_modules().get(name, "?"), build, (Floats(size),)))
    return specs


# -------------------------------------------------------------------------------------------- transformers

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
VOCAB = 1000
SEQ = 32
WHISPER_POSITIONS = 64  # encoder positions; the input has 2x as many frames (a stride-2 convolution)


def _hf(model_class: str, config_class: str, wrapper: type[nn.Module], **config) -> nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    config = getattr(transformers, config_class)(**config)
    return wrapper(getattr(transformers, model_class)(config))


def _whisper_encoder() -> nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.WhisperConfig(
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=2,
        decoder_layers=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        max_source_positions=WHISPER_POSITIONS,
        vocab_size=VOCAB,
        pad_token_id=0,  # the defaults (50256, 50257) lie outside the small vocabulary
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        use_cache=False,
    )
    return AudioWrapper(transformers.WhisperModel(config).get_encoder())


def transformers_specs() -> list[ModelSpec]:
    text = (TokenIds(SEQ, VOCAB), Mask(SEQ))
    image = (Floats((3, 224, 224)),)
    decoder = {**SMALL, "num_key_value_heads": 1, "vocab_size": VOCAB, "max_position_embeddings": 128}
    decoder["use_cache"] = False
    rows = [
        ("bert", "BertModel", "BertConfig", TextWrapper, {**SMALL, "vocab_size": VOCAB}, text),
        (
            "distilbert",
            "DistilBertModel",
            "DistilBertConfig",
            TextWrapper,
            {"dim": 64, "n_layers": 2, "n_heads": 2, "hidden_dim": 128, "vocab_size": VOCAB},
            text,
        ),
        (
            "roberta",
            "RobertaModel",
            "RobertaConfig",
            TextWrapper,
            {**SMALL, "vocab_size": VOCAB, "max_position_embeddings": SEQ + 4},
            text,
        ),
        (
            "gpt2",
            "GPT2LMHeadModel",
            "GPT2Config",
            CausalLMWrapper,
            {
                "n_embd": 64,
                "n_layer": 2,
                "n_head": 2,
                "vocab_size": VOCAB,
                "n_positions": 128,
                "bos_token_id": 0,
                "eos_token_id": 0,
                "use_cache": False,
            },
            text,
        ),
        ("llama", "LlamaForCausalLM", "LlamaConfig", CausalLMWrapper, decoder, text),
        ("mistral", "MistralForCausalLM", "MistralConfig", CausalLMWrapper, decoder, text),
        ("qwen2", "Qwen2ForCausalLM", "Qwen2Config", CausalLMWrapper, decoder, text),
        (
            "t5_encoder",
            "T5EncoderModel",
            "T5Config",
            TextWrapper,
            {"d_model": 64, "d_kv": 32, "d_ff": 128, "num_layers": 2, "num_heads": 2, "vocab_size": VOCAB},
            text,
        ),
        (
            "vit",
            "ViTForImageClassification",
            "ViTConfig",
            PixelWrapper,
            {**SMALL, "image_size": 224, "patch_size": 16, "num_labels": 10},
            image,
        ),
        (
            "clip_text",
            "CLIPTextModel",
            "CLIPTextConfig",
            TextWrapper,
            {**SMALL, "vocab_size": VOCAB, "max_position_embeddings": 77},
            text,
        ),
        (
            "clip_vision",
            "CLIPVisionModel",
            "CLIPVisionConfig",
            PixelWrapper,
            {**SMALL, "image_size": 224, "patch_size": 32},
            image,
        ),
    ]
    specs = []
    for name, model_class, config_class, wrapper, config, inputs in rows:
        build = functools.partial(_hf, model_class, config_class, wrapper, **config)
        specs.append(ModelSpec(f"hf.{name}", "transformers", model_class, build, inputs, wrapper.__name__))
    audio = (Floats((80, 2 * WHISPER_POSITIONS)),)  # mel bins x frames
    specs.append(
        ModelSpec("hf.whisper_encoder", "transformers", "WhisperEncoder", _whisper_encoder, audio, "AudioWrapper")
    )
    return specs


# -------------------------------------------------------------------------------------------------- nn


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def _decoder() -> nn.Module:
    layer = nn.TransformerDecoderLayer(256, 4, dim_feedforward=1024, batch_first=True)
    return nn.TransformerDecoder(layer, num_layers=4)


def nn_specs() -> list[ModelSpec]:
    return [
        ModelSpec(
            "nn.lstm",
            "nn",
            "LSTM",
            lambda: nn.LSTM(32, 64, num_layers=2, batch_first=True),
            (Floats((16, 32)),),
            notes=["2 layers, batch_first, input 32, hidden 64, seq 16; returns (output, (h_n, c_n))"],
        ),
        ModelSpec(
            "nn.gru",
            "nn",
            "GRU",
            lambda: nn.GRU(32, 64, num_layers=2, batch_first=True),
            (Floats((16, 32)),),
            notes=["2 layers, batch_first, input 32, hidden 64, seq 16; returns (output, h_n)"],
        ),
        ModelSpec(
            "nn.transformer_encoder",
            "nn",
            "TransformerEncoder",
            TokenTransformerEncoder,
            (TokenIds(SEQ, VOCAB),),
            notes=["nn.Embedding(1000, 256) + 4 x TransformerEncoderLayer(256, 4 heads, ffn 1024, batch_first)"],
        ),
        ModelSpec(
            "nn.transformer_decoder",
            "nn",
            "TransformerDecoder",
            _decoder,
            (Floats((16, 256)), Floats((SEQ, 256))),
            notes=["4 x TransformerDecoderLayer(256, 4 heads, ffn 1024, batch_first); inputs tgt, memory"],
        ),
        ModelSpec(
            "nn.mha",
            "nn",
            "MultiheadAttention",
            lambda: nn.MultiheadAttention(256, 4, batch_first=True),
            (Floats((16, 256)), Floats((SEQ, 256)), Floats((SEQ, 256))),
            notes=["256 wide, 4 heads, batch_first; inputs query, key, value; returns (output, weights)"],
        ),
        ModelSpec("nn.mlp", "nn", "MLP", _mlp, (Floats((512,)),), notes=["Linear 512-1024-1024-10 with ReLU"]),
    ]


# ------------------------------------------------------------------------------------------- selection

BUILDERS = {"torchvision": torchvision_specs, "timm": timm_specs, "transformers": transformers_specs, "nn": nn_specs}
PACKAGES = {"torchvision": "torchvision==0.29.1", "timm": "timm==1.0.31", "transformers": "transformers==5.23.0"}

#: About 20 models that span every family and output structure, for CI (`--subset fast`).
FAST = [
    "tv.resnet18",  # plain CNN
    "tv.mobilenet_v3_small",  # depthwise convolutions, hardswish, squeeze-excite
    "tv.googlenet",  # aux heads: a named tuple with None entries when scripted
    "tv.lraspp_mobilenet_v3_large",  # segmentation: returns a dict
    "tv.ssdlite320_mobilenet_v3_large",  # detection: list of images in, list of dicts out
    "timm.vit_tiny_patch16_224",
    "timm.swin_tiny_patch4_window7_224",
    "timm.efficientnetv2_rw_t",
    "timm.convnext_atto",
    "hf.bert",
    "hf.gpt2",
    "hf.llama",
    "hf.t5_encoder",
    "hf.whisper_encoder",
    "nn.lstm",  # nested tuple output
    "nn.gru",
    "nn.transformer_encoder",
    "nn.transformer_decoder",  # two inputs
    "nn.mha",  # three inputs, two outputs
    "nn.mlp",
]

#: Exported to .pt2 (AOTInductor) with --pt2: a few CNNs, a transformer encoder, an MLP.
PT2_MODELS = [
    "tv.resnet18",
    "tv.mobilenet_v3_small",
    "timm.efficientnet_b0",
    "nn.transformer_encoder",
    "hf.bert",
    "nn.mlp",
]
#: Quantized with tb.quantize(mode="dynamic") with --pt2 (models with nn.Linear / LSTM / GRU).
INT8_MODELS = ["nn.mlp", "nn.lstm", "nn.gru", "nn.transformer_encoder", "hf.bert", "timm.vit_tiny_patch16_224"]


def all_specs(families: tuple[str, ...] = FAMILIES) -> list[ModelSpec]:
    """Every model of the given families, in family order."""
    specs = []
    for family in families:
        package = PACKAGES.get(family)
        if package:
            try:
                __import__(package.split("==")[0])
            except ImportError as error:
                raise SystemExit(f"the {family} family needs `pip install {package}` ({error})") from error
        specs += BUILDERS[family]()
    return specs


def find(name: str) -> ModelSpec:
    family = {"tv": "torchvision", "timm": "timm", "hf": "transformers", "nn": "nn"}.get(name.split(".")[0])
    if family is None:
        raise SystemExit(f"unknown model '{name}': names start with tv., timm., hf. or nn.")
    for spec in all_specs((family,)):
        if spec.name == name:
            return spec
    raise SystemExit(f"unknown model '{name}'")


def parameter_count(spec: ModelSpec) -> tuple[int | None, str]:
    """(parameters, how they were counted) without building the model in memory: built on the meta
    device, or, for torchvision models whose constructor cannot run there, from torchvision's
    weights metadata. (None, "") when neither works; the model is then built for real."""
    try:
        with torch.device("meta"):
            model = spec.build()
        return sum(p.numel() for p in model.parameters()), "meta device"
    except Exception:
        pass
    if spec.family == "torchvision":
        import torchvision

        try:
            weights = list(torchvision.models.get_model_weights(spec.name.split(".", 1)[1]))
            return int(weights[0].meta["num_params"]), "torchvision weights metadata"
        except Exception:
            pass
    return None, ""
