"""Metadata evidence: what a file's own metadata says about where it came from.

Generated images often still carry their origin: AUTOMATIC1111's 'parameters' text, NovelAI's
Software/Source/Comment chunks, ComfyUI's 'prompt' graph, an EXIF or XMP creator tool, an IPTC
"digital source type", a C2PA manifest. `read_evidence` turns each into one `Evidence` item: the
generator it names (if any), whether it points to AI, and why, in words.

Everything here is untrusted input. It is read, never run: JSON goes through `json.loads` with a size
limit, XMP through a few bounded regular expressions (no XML parser, so no entity expansion), C2PA
through a byte search. C2PA signatures are NOT validated. Metadata is easily stripped or forged, so
the result is reported beside the model's verdict and never changes its probabilities.

The text comes from `io.load_image` (`LoadedImage.metadata`). The raw file bytes are optional; they
are needed for C2PA (which PIL does not expose) and to re-read PNG text that the loader cut short.
"""

from __future__ import annotations

import html
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from animeprov.io import MAX_METADATA_CHARS, LoadedImage

METADATA_CAVEAT = (
    "Metadata is easily stripped or forged; it is reported beside the model's verdict and never "
    "changes its probabilities."
)

MAX_JSON_CHARS = 4_000_000  # big ComfyUI workflows are a few hundred KB; anything larger is refused
_MAX_SHOWN_CHARS = 120  # a quoted value in `detail`
_MAX_GENERATOR_CHARS = 200


@dataclass(frozen=True)
class Evidence:
    source: str  # "a1111-parameters", "novelai", "comfyui", "png-software", "exif-software", "xmp", "c2pa"
    generator: str | None  # the generator it names; None if it names none (then it may still mark AI)
    indicates_ai: bool | None  # True: names a generator or carries an AI marker; False: points to a
    # person's tool or a human-made source type; None: unknown or unreadable
    detail: str  # why, in words, with the values quoted (shortened)


def read_evidence(loaded: LoadedImage, raw: bytes | None = None) -> list[Evidence]:
    """Every piece of origin evidence in an image's metadata, in a fixed order; [] if there is none.

    `raw` (the file's bytes) adds C2PA detection and full-length PNG text. Typical use:
    `raw = path.read_bytes(); read_evidence(load_image(raw, name=str(path)), raw)`.
    Never raises on odd metadata: a reader that fails yields an item saying so.
    """
    text = _TextSource(loaded.metadata, raw)
    items: list[Evidence] = []
    for source, reader in _READERS:
        try:
            items += reader(text)
        except Exception as error:  # metadata is attacker-controlled; it must never stop a prediction
            items.append(Evidence(source, None, None, f"could not be read ({type(error).__name__})"))
    return items


def evidence_summary(items: list[Evidence]) -> dict:
    """JSON-ready summary. Overall `indicates_ai`: True if any item marks AI (an AI marker is more
    specific than "saved by Photoshop"), else False if any item points to a person's tool, else None."""
    flags = [item.indicates_ai for item in items]
    overall = True if True in flags else False if False in flags else None
    return {
        "items": [asdict(item) for item in items],
        "named_generators": list(dict.fromkeys(item.generator for item in items if item.generator)),
        "indicates_ai": overall,
        "caveat": METADATA_CAVEAT,
    }


# ----------------------------------------------------------------------------------------------
# Text access
# ----------------------------------------------------------------------------------------------


class _TextSource:
    """Metadata values by key; a value the loader truncated is re-read in full from the raw PNG."""

    def __init__(self, metadata: dict[str, str], raw: bytes | None) -> None:
        self.metadata = metadata
        self.raw = raw

    def get(self, key: str) -> str | None:
        value = self.metadata.get(key)
        if not isinstance(value, str):
            return None
        if self.is_cut(key) and self.raw:
            return _png_text(self.raw, key) or value
        return value

    def is_cut(self, key: str) -> bool:
        """Whether the loader truncated this value (io keeps MAX_METADATA_CHARS, then adds a marker)."""
        value = self.metadata.get(key)
        return isinstance(value, str) and len(value) > MAX_METADATA_CHARS


def _short(text: object, limit: int = _MAX_SHOWN_CHARS) -> str:
    """A value safe to show in one line: control characters blanked, cut to `limit` characters."""
    shown = "".join(ch if ch.isprintable() else " " for ch in str(text)[: limit + 1])
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _load_json(text: str) -> tuple[object, str | None]:
    """(value, None) or (None, why not). Only json.loads, with a size limit: nothing is evaluated."""
    if len(text) > MAX_JSON_CHARS:
        return None, f"longer than {MAX_JSON_CHARS:,} characters"
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as error:  # JSONDecodeError, and integers too long to convert
        return None, _short(error, 80)


# ----------------------------------------------------------------------------------------------
# Programs named in Software / CreatorTool / claim_generator
# ----------------------------------------------------------------------------------------------

# Heuristic and incomplete lists, matched as whole words, case-insensitively.
_AI_TOOLS = re.compile(
    r"\b(novelai|stable[ -]?diffusion|sdxl|midjourney|niji ?journey|dall[-·]?e|comfyui|automatic1111|"
    r"stable-diffusion-webui|invokeai|fooocus|firefly|imagen|leonardo\.ai|bing image creator|chatgpt|"
    r"openai)\b",
    re.IGNORECASE,
)
_PAINTING_TOOLS = re.compile(
    r"\b(photoshop|clip studio|celsys|krita|gimp|painttool sai|medibang|firealpaca|procreate|ibis ?paint|"
    r"paint\.net|aseprite|inkscape|illustrator|corel painter|artrage|rebelle|affinity|opencanvas|"
    r"sketchbook|mypaint|photopea)\b",
    re.IGNORECASE,
)


def _classify_program(name: str) -> tuple[bool | None, str]:
    """(indicates_ai, what that means) for a program name."""
    if _AI_TOOLS.search(name):
        return True, "names an AI image generator"
    if _PAINTING_TOOLS.search(name):
        return False, (
            "a drawing/editing program saved the file; that does not prove a person drew it "
            "(editors can also add generated content)"
        )
    return None, "not a program known to generate or to paint images"


# ----------------------------------------------------------------------------------------------
# AUTOMATIC1111 (and forks: Forge, SD.Next): "prompt\nNegative prompt: ...\nSteps: 20, Sampler: ..."
# ----------------------------------------------------------------------------------------------

_MAX_SETTINGS_LINE = 16_000
# "Key: value" pairs; a value may be quoted to hold commas. Bounded repeats keep matching linear.
_A1111_PAIR = re.compile(r'([A-Za-z][\w .()/+-]{0,40}?)\s*:\s*("(?:[^"\\]|\\.){0,4000}"|[^,]*)')
_A1111_SHOWN = ("Model", "Model hash", "Steps", "Sampler", "Version")


def _a1111_settings(text: str) -> dict[str, str] | None:
    """The key/value pairs of the last line starting with "Steps:", or None if there is no such line."""
    line = next((line for line in reversed(text.splitlines()) if line.startswith("Steps:")), None)
    if line is None:
        return None
    settings: dict[str, str] = {}
    for match in _A1111_PAIR.finditer(line[:_MAX_SETTINGS_LINE]):
        settings.setdefault(match.group(1).strip(), match.group(2).strip().strip('"'))
    return settings


def _read_a1111(text: _TextSource) -> list[Evidence]:
    items = []
    for key, where in (("parameters", "text chunk 'parameters'"), ("EXIF:UserComment", "EXIF UserComment")):
        value = text.get(key)
        if value is None:
            continue
        settings = _a1111_settings(value)
        if settings is None:
            if key == "parameters":  # UserComment is generic text; only 'parameters' is worth reporting
                items.append(
                    Evidence(
                        "a1111-parameters", None, None, f"{where} without an A1111 'Steps:' settings line"
                    )
                )
            continue
        model, model_hash = settings.get("Model"), settings.get("Model hash")
        generator = model or (f"model hash {model_hash}" if model_hash else None)
        shown = ", ".join(
            f"{name}: {_short(settings[name], 60)}" for name in _A1111_SHOWN if name in settings
        )
        detail = f"{where} with AUTOMATIC1111-style generation settings ({shown or 'no model named'})"
        items.append(
            Evidence("a1111-parameters", generator and _short(generator, _MAX_GENERATOR_CHARS), True, detail)
        )
    return items


# ----------------------------------------------------------------------------------------------
# NovelAI: Software="NovelAI", Source="Stable Diffusion 81274D13", Comment='{"steps": 28, ...}'
# ----------------------------------------------------------------------------------------------

# Model ids documented in shared/data/README.md (label evidence of the novelai class).
_NOVELAI_MODELS = {
    "81274D13": "NAI Diffusion Anime V1 Full",
    "1D44365E": "NAI Diffusion Anime V1 Curated",
}
_NOVELAI_SETTINGS = ("steps", "sampler", "seed", "scale", "strength", "noise")


def _read_novelai(text: _TextSource) -> list[Evidence]:
    if (text.get("Software") or "").strip().lower() != "novelai":
        return []
    source = (text.get("Source") or "").strip()
    generator = f"NovelAI ({_short(source, 100)})" if source else "NovelAI"
    parts = ["text chunk 'Software' = 'NovelAI'"]
    if source:
        model_id = source.split()[-1].upper()
        known = f" ({_NOVELAI_MODELS[model_id]})" if model_id in _NOVELAI_MODELS else ""
        parts.append(f"'Source' = '{_short(source)}'{known}")
    comment = text.get("Comment")
    if comment is not None:
        settings, error = _load_json(comment)
        if isinstance(settings, dict):
            shown = [
                f"{name}={_short(settings[name], 40)}"
                for name in _NOVELAI_SETTINGS
                if isinstance(settings.get(name), (str, int, float))
            ]
            parts.append(f"'Comment' settings {', '.join(shown) or '(none recognised)'}")
        else:
            parts.append(f"'Comment' unreadable ({error or 'not a JSON object'})")
    return [Evidence("novelai", generator, True, "; ".join(parts))]


# ----------------------------------------------------------------------------------------------
# ComfyUI: 'prompt' = the executed graph {"id": {"class_type": ..., "inputs": {...}}},
#          'workflow' = the editor's graph {"nodes": [{"type": ..., "widgets_values": [...]}]}
# ----------------------------------------------------------------------------------------------

_MODEL_INPUTS = ("ckpt_name", "unet_name")  # CheckpointLoader(Simple) and most custom loaders; UNETLoader
_MODEL_FILE = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft)$", re.IGNORECASE)
_SAVE_NODE = re.compile(r"save|preview", re.IGNORECASE)
_WORKFLOW_LOADER = re.compile(r"checkpointloader|unetloader", re.IGNORECASE)
_WORKFLOW_INACTIVE_MODES = (2, 4)  # muted, bypassed: these nodes did not run


def _file_name(model_path: str) -> str:
    """'0ev\\anything-v4.5.safetensors' -> 'anything-v4.5.safetensors' (either separator)."""
    return re.split(r"[\\/]", model_path)[-1] or model_path


def _read_comfyui(text: _TextSource) -> list[Evidence]:
    for key, reader in (("prompt", _comfyui_prompt), ("workflow", _comfyui_workflow)):
        value = text.get(key)
        if value is None:
            continue
        graph, error = _load_json(value)
        if error:
            if text.is_cut(key) and len(value) <= MAX_JSON_CHARS:  # still the loader's truncated copy
                error = "cut short by the image loader; give read_evidence the raw file bytes"
            return [Evidence("comfyui", None, None, f"text chunk '{key}' is not readable JSON ({error})")]
        return reader(graph)
    return []


def _node_inputs(node: object) -> dict:
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return inputs if isinstance(inputs, dict) else {}


def _class_type(node: object) -> str:
    kind = node.get("class_type") if isinstance(node, dict) else None
    return kind if isinstance(kind, str) else ""


def _upstream(graph: dict, starts: list[str]) -> set[str]:
    """Ids of the nodes that feed `starts` (included), following [node_id, output] links; cycle-safe."""
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in graph:
            continue
        seen.add(node_id)
        for value in _node_inputs(graph[node_id]).values():
            if isinstance(value, list) and value and isinstance(value[0], (str, int)):
                stack.append(str(value[0]))
    return seen


def _comfyui_prompt(graph: object) -> list[Evidence]:
    if not isinstance(graph, dict) or not any(_class_type(node) for node in graph.values()):
        return [Evidence("comfyui", None, None, "text chunk 'prompt' is JSON but not a ComfyUI graph")]
    loaders = [
        (node_id, _class_type(node), value)
        for node_id, node in graph.items()
        for name, value in _node_inputs(node).items()
        if name in _MODEL_INPUTS and isinstance(value, str) and value.strip()
    ]
    saves = [node_id for node_id, node in graph.items() if _SAVE_NODE.search(_class_type(node))]
    feeding = _upstream(graph, saves)
    traced = [loader for loader in loaders if loader[0] in feeding]
    if traced:
        loaders, how = traced, "feeds the graph's save/preview node"
    else:
        how = "not traced to a save node"
    intro = f"ComfyUI graph in text chunk 'prompt' ({len(graph)} nodes)"
    if not loaders:
        has_sampler = any("sampler" in _class_type(node).lower() for node in graph.values())
        what = (
            "a sampler node but no model loader we recognise" if has_sampler else "no model loader or sampler"
        )
        return [Evidence("comfyui", None, True if has_sampler else None, f"{intro} with {what}")]
    names = list(dict.fromkeys(_file_name(value) for _, _, value in loaders))
    ambiguous = (
        f"; one of {len(names)} models in the graph, which one made this file is not traced"
        if len(names) > 1
        else ""
    )
    items = []
    for name in names:
        node_id, kind, value = next(loader for loader in loaders if _file_name(loader[2]) == name)
        node = f"{_short(kind, 60)} node {_short(node_id, 20)}"
        detail = f"{intro}: {node} loads '{_short(value)}' ({how}){ambiguous}"
        items.append(Evidence("comfyui", _short(name, _MAX_GENERATOR_CHARS), True, detail))
    return items


def _comfyui_workflow(graph: object) -> list[Evidence]:
    """Fallback when only the editor graph is present: it may hold nodes that never ran."""
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    if not isinstance(nodes, list):
        return [Evidence("comfyui", None, None, "text chunk 'workflow' is JSON but not a ComfyUI workflow")]
    names: dict[str, str] = {}  # file name -> node type
    for node in nodes:
        if not isinstance(node, dict) or node.get("mode") in _WORKFLOW_INACTIVE_MODES:
            continue
        kind, values = node.get("type"), node.get("widgets_values")
        if isinstance(kind, str) and _WORKFLOW_LOADER.search(kind) and isinstance(values, list):
            for value in values:
                if isinstance(value, str) and _MODEL_FILE.search(value.strip()):
                    names.setdefault(_file_name(value.strip()), kind)
    intro = f"ComfyUI editor graph in text chunk 'workflow' ({len(nodes)} nodes; no executed 'prompt' graph)"
    if not names:
        return [Evidence("comfyui", None, None, f"{intro} with no active model loader")]
    caveat = "; the editor graph does not show which loader made this file" if len(names) > 1 else ""
    return [
        Evidence(
            "comfyui",
            _short(name, _MAX_GENERATOR_CHARS),
            True,
            f"{intro}: {_short(kind, 60)} '{_short(name)}'{caveat}",
        )
        for name, kind in names.items()
    ]


# ----------------------------------------------------------------------------------------------
# Software: PNG text chunk and EXIF tag 0x0131
# ----------------------------------------------------------------------------------------------


def _read_software(text: _TextSource) -> list[Evidence]:
    items = []
    for key, source, where in (
        ("Software", "png-software", "text chunk 'Software'"),
        ("EXIF:Software", "exif-software", "EXIF Software"),
    ):
        value = (text.get(key) or "").strip()
        if not value or (key == "Software" and value.lower() == "novelai"):  # NovelAI: its own item
            continue
        indicates_ai, meaning = _classify_program(value)
        generator = _short(value, _MAX_GENERATOR_CHARS) if indicates_ai else None
        items.append(Evidence(source, generator, indicates_ai, f"{where} '{_short(value)}': {meaning}"))
    return items


# ----------------------------------------------------------------------------------------------
# XMP: xmp:CreatorTool and IPTC Iptc4xmpExt:DigitalSourceType (read with regexes, no XML parser)
# ----------------------------------------------------------------------------------------------

_IPTC_AI_SOURCES = {"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"}
_IPTC_HUMAN_SOURCES = {  # capture, scan or human-made digital work with non-generative tools
    "digitalCapture",
    "computationalCapture",
    "negativeFilm",
    "positiveFilm",
    "print",
    "digitalCreation",
    "digitalArt",
    "humanEdits",
    "minorHumanEdits",
    "compositeCapture",
    "screenCapture",
}


def _xmp_property(packet: str, name: str) -> str | None:
    """The first value of property `name` (any namespace prefix), as an attribute or a simple element."""
    attribute = re.search(rf"""[\s:]{name}\s*=\s*(["'])(.{{0,500}}?)\1""", packet, re.DOTALL)
    element = re.search(rf"<(?:[\w.-]+:)?{name}\s*>([^<]{{0,500}})<", packet)
    found = attribute.group(2) if attribute else element.group(1) if element else ""
    return html.unescape(found).strip() or None


def _read_xmp(text: _TextSource) -> list[Evidence]:
    packet = text.get("xmp") or text.get("XML:com.adobe.xmp")
    if not packet:
        return []
    source_type = _xmp_property(packet, "DigitalSourceType")
    tool = _xmp_property(packet, "CreatorTool")
    if source_type is None and tool is None:
        return []
    parts, flags = [], []
    if source_type is not None:
        code = source_type.rstrip("/").rsplit("/", 1)[-1]
        flag = True if code in _IPTC_AI_SOURCES else False if code in _IPTC_HUMAN_SOURCES else None
        meaning = {True: "an AI marker", False: "declares a non-AI source", None: "not an AI marker"}[flag]
        parts.append(f"IPTC DigitalSourceType '{_short(code)}' ({meaning})")
        flags.append(flag)
    if tool is not None:
        flag, meaning = _classify_program(tool)
        parts.append(f"CreatorTool '{_short(tool)}' ({meaning})")
        flags.append(flag)
    indicates_ai = True if True in flags else False if False in flags else None
    generator = _short(tool, _MAX_GENERATOR_CHARS) if indicates_ai and tool else None
    return [Evidence("xmp", generator, indicates_ai, "XMP packet: " + "; ".join(parts))]


# ----------------------------------------------------------------------------------------------
# C2PA: JUMBF boxes in a PNG caBX chunk, JPEG APP11 segments or a WebP C2PA chunk (raw bytes only)
# ----------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_APP11 = 0xEB
_JPEG_START_OF_SCAN = 0xDA


def _png_chunks(raw: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(type, data) of each PNG chunk, stopping at IEND or at a chunk that runs past the end."""
    if not raw.startswith(_PNG_SIGNATURE):
        return
    view, pos = memoryview(raw), len(_PNG_SIGNATURE)
    while pos + 8 <= len(raw):
        length = int.from_bytes(raw[pos : pos + 4], "big")
        kind, end = bytes(raw[pos + 4 : pos + 8]), pos + 8 + length
        if end > len(raw):
            return
        yield kind, view[pos + 8 : end]
        if kind == b"IEND":
            return
        pos = end + 4  # skip the CRC: we only look, so a bad CRC does not matter here


def _inflate(data: bytes) -> bytes | None:
    """zlib data, refusing output over MAX_JSON_CHARS bytes (a zip bomb) and bad streams."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_JSON_CHARS)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else out


def _png_text(raw: bytes, key: str) -> str | None:
    """The full text of PNG tEXt/zTXt/iTXt chunk `key`, or None."""
    for kind, data in _png_chunks(raw):
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        keyword, _, rest = bytes(data).partition(b"\x00")
        if keyword.decode("latin-1") != key:
            continue
        if kind == b"tEXt":
            return rest.decode("latin-1")
        if kind == b"zTXt":  # method byte, then the zlib stream
            body = _inflate(rest[1:])
            return body.decode("latin-1") if body is not None else None
        if len(rest) < 2:  # iTXt: compression flag, method, language\0, translated keyword\0, text
            return None
        compressed, body = rest[0], rest[2:].partition(b"\x00")[2].partition(b"\x00")[2]
        body = _inflate(body) if compressed else body
        return body.decode("utf-8", errors="replace") if body is not None else None
    return None


def _jpeg_app11(raw: bytes) -> bytes:
    """The APP11 segment payloads of a JPEG, joined, read up to the start of the image data."""
    if not raw.startswith(b"\xff\xd8"):
        return b""
    payloads, pos = [], 2
    while pos + 4 <= len(raw) and raw[pos] == 0xFF:
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _JPEG_START_OF_SCAN or 0xD0 <= marker <= 0xD9:  # image data, or no length field
            break
        length = int.from_bytes(raw[pos + 2 : pos + 4], "big")
        if length < 2:
            break
        if marker == _JPEG_APP11:
            payloads.append(raw[pos + 4 : pos + 2 + length])
        pos += 2 + length
    return b"".join(payloads)


def _webp_c2pa(raw: bytes) -> bytes:
    """The payload of a WebP 'C2PA' RIFF chunk, or b''."""
    if not (raw.startswith(b"RIFF") and raw[8:12] == b"WEBP"):
        return b""
    pos = 12
    while pos + 8 <= len(raw):
        kind, size = raw[pos : pos + 4], int.from_bytes(raw[pos + 4 : pos + 8], "little")
        if kind == b"C2PA":
            return raw[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return b""


def _find_c2pa(raw: bytes) -> tuple[str, bytes] | None:
    """(where, manifest bytes) if the file carries an embedded C2PA manifest store."""
    png = b"".join(bytes(data) for kind, data in _png_chunks(raw) if kind == b"caBX")
    if png:
        return "PNG caBX chunk", png
    jpeg = _jpeg_app11(raw)
    if b"jumb" in jpeg and b"c2pa" in jpeg:  # APP11 also carries other JUMBF (JPEG XT); want the C2PA label
        return "JPEG APP11 segments", jpeg
    webp = _webp_c2pa(raw)
    if webp:
        return "WebP C2PA chunk", webp
    return None


def _cbor_text(blob: bytes, pos: int) -> str | None:
    """The CBOR text string starting at `pos` (major type 3, definite length up to 500 bytes)."""
    if pos >= len(blob) or blob[pos] >> 5 != 3:
        return None
    size_code = blob[pos] & 0x1F
    if size_code < 24:
        length, start = size_code, pos + 1
    elif size_code == 24:
        length, start = int.from_bytes(blob[pos + 1 : pos + 2], "big"), pos + 2
    elif size_code == 25:
        length, start = int.from_bytes(blob[pos + 1 : pos + 3], "big"), pos + 3
    else:
        return None
    if length > 500 or start + length > len(blob):
        return None
    return blob[start : start + length].decode("utf-8", errors="replace")


def _claim_generator(blob: bytes) -> str | None:
    """The claim_generator text (C2PA 1.x), or claim_generator_info's first name (2.x), if readable."""
    key = b"claim_generator"
    for match in re.finditer(re.escape(key), blob):
        value = _cbor_text(blob, match.end())  # 1.x: the value follows the key directly
        if value:
            return value
        if blob[match.end() : match.end() + 5] == b"_info":  # 2.x: [{"name": ..., "version": ...}]
            name_at = blob.find(b"\x64name", match.end(), match.end() + 80)
            value = _cbor_text(blob, name_at + 5) if name_at >= 0 else None
            if value:
                return value
    as_json = re.search(rb'"claim_generator"\s*:\s*"([^"\\]{1,200})"', blob)  # some tools write JSON
    return as_json.group(1).decode("utf-8", errors="replace") if as_json else None


def _read_c2pa(text: _TextSource) -> list[Evidence]:
    found = _find_c2pa(text.raw) if text.raw else None
    if found is None:
        return []
    where, blob = found
    claim_generator = _claim_generator(blob)
    # A camera or an editor signs C2PA too, so presence alone is no AI marker: only the IPTC source
    # type in the actions assertion, or an AI generator named as the claim generator, counts.
    ai_marker = b"trainedalgorithmicmedia" in blob.lower()
    indicates_ai = True if ai_marker else _classify_program(claim_generator)[0] if claim_generator else None
    parts = [f"C2PA manifest in {where} ({len(blob):,} bytes)"]
    parts.append(
        f"claim_generator '{_short(claim_generator)}'" if claim_generator else "no readable claim_generator"
    )
    if ai_marker:
        parts.append("it declares an IPTC trainedAlgorithmicMedia source type (AI-generated content)")
    parts.append("signature NOT validated: the manifest may be forged or copied from another file")
    generator = _short(claim_generator, _MAX_GENERATOR_CHARS) if indicates_ai and claim_generator else None
    return [Evidence("c2pa", generator, indicates_ai, "; ".join(parts))]


# In the order their items appear; each name labels the item written if that reader fails.
_READERS = (
    ("a1111-parameters", _read_a1111),
    ("novelai", _read_novelai),
    ("comfyui", _read_comfyui),
    ("software", _read_software),
    ("xmp", _read_xmp),
    ("c2pa", _read_c2pa),
)
