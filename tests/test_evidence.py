"""Metadata evidence: each kind of chunk, built with PIL or by hand, read back exactly; junk never raises."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from animeprov import evidence as evidence_module
from animeprov.evidence import METADATA_CAVEAT, Evidence, evidence_summary, read_evidence
from animeprov.io import MAX_METADATA_CHARS, load_image

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def tiny_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))


def png_bytes(text: dict[str, str] | None = None, itxt: dict[str, str] | None = None, zip_text: bool = False):
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value, zip=zip_text)
    for key, value in (itxt or {}).items():
        info.add_itxt(key, value, zip=zip_text)
    buffer = io.BytesIO()
    tiny_image().save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def jpeg_bytes(exif: Image.Exif | None = None) -> bytes:
    buffer = io.BytesIO()
    tiny_image().save(buffer, "JPEG", **({"exif": exif} if exif is not None else {}))
    return buffer.getvalue()


def with_png_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """Insert a chunk (length, type, data, CRC over type + data) just before IEND."""
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + chunk + png[iend:]


def with_jpeg_app11(jpeg: bytes, payload: bytes) -> bytes:
    segment = b"\xff\xeb" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def cbor_text(value: str) -> bytes:
    data = value.encode()
    return (bytes([0x60 + len(data)]) if len(data) < 24 else b"\x78" + bytes([len(data)])) + data


def fake_c2pa(claim: bytes, ai_source: bool) -> bytes:
    """A JUMBF-looking manifest store: 'jumb' superbox, 'jumd' with the 'c2pa' label, CBOR claim bytes."""
    description = b"jumd" + b"c2pa" + bytes(12) + b"\x03" + b"c2pa\x00"
    actions = (
        cbor_text("digitalSourceType") + cbor_text(IPTC + "trainedAlgorithmicMedia") if ai_source else b""
    )
    body = description + b"\xa2" + claim + actions
    return struct.pack(">I", len(body) + 8) + b"jumb" + body


def evidence_of(raw: bytes, with_raw: bool = True) -> list[Evidence]:
    return read_evidence(load_image(raw), raw if with_raw else None)


A1111_TEXT = (
    "1girl, masterpiece\nNegative prompt: lowres\n"
    'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Lora hashes: "x: 12ab, Model: lora-x", '
    "Model hash: 1a2b3c, Model: anything-v4.5, Version: v1.6.0"
)


# ----------------------------------------------------------------------------------------------
# Each source
# ----------------------------------------------------------------------------------------------


def test_a1111_parameters_names_the_model_and_keeps_quoted_commas_together():
    [item] = evidence_of(png_bytes({"parameters": A1111_TEXT}))
    assert (item.source, item.generator, item.indicates_ai) == ("a1111-parameters", "anything-v4.5", True)
    assert "text chunk 'parameters'" in item.detail
    assert (
        "Model: anything-v4.5, Model hash: 1a2b3c, Steps: 20, Sampler: Euler a, Version: v1.6.0"
        in item.detail
    )


def test_a1111_hash_only_and_no_settings_line():
    [item] = evidence_of(png_bytes({"parameters": "a cat\nSteps: 30, Model hash: 9f8e7d"}))
    assert (item.generator, item.indicates_ai) == ("model hash 9f8e7d", True)
    [item] = evidence_of(png_bytes({"parameters": "just some words, no settings"}))
    assert (item.source, item.generator, item.indicates_ai) == ("a1111-parameters", None, None)


def test_a1111_parameters_in_jpeg_exif_user_comment():
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111_TEXT.encode("utf-16-be")
    [item] = evidence_of(jpeg_bytes(exif))
    assert (item.source, item.generator, item.indicates_ai) == ("a1111-parameters", "anything-v4.5", True)
    assert item.detail.startswith("EXIF UserComment")


def test_novelai_chunks():
    comment = json.dumps({"steps": 28, "sampler": "k_euler", "seed": 3703327701, "scale": 11.0, "uc": "x"})
    raw = png_bytes(
        {
            "Title": "AI generated image",
            "Software": "NovelAI",
            "Source": "Stable Diffusion 1D44365E",
            "Comment": comment,
        }
    )
    [item] = evidence_of(raw)  # Software=NovelAI gives the novelai item only, not a second software item
    assert (item.source, item.generator, item.indicates_ai) == (
        "novelai",
        "NovelAI (Stable Diffusion 1D44365E)",
        True,
    )
    assert "NAI Diffusion Anime V1 Curated" in item.detail
    assert "steps=28, sampler=k_euler, seed=3703327701, scale=11.0" in item.detail


def test_novelai_with_malformed_comment_is_still_novelai():
    raw = png_bytes({"Software": "NovelAI", "Comment": '{"steps": 28, "sampler": '})
    [item] = evidence_of(raw)
    assert (item.source, item.generator, item.indicates_ai) == ("novelai", "NovelAI", True)
    assert "'Comment' unreadable" in item.detail


def comfy_graph(*checkpoints: tuple[str, bool]) -> str:
    """A ComfyUI API graph with one loader per (ckpt_name, wired) pair; the first always feeds SaveImage."""
    graph: dict[str, dict] = {"9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}}
    graph["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["10", 2]}}
    graph["3"] = {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["10", 0]}}
    for index, (name, wired) in enumerate(checkpoints):
        node_id = str(10 + index)
        graph[node_id] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}
        if wired and index:
            graph[f"sampler{index}"] = {"class_type": "KSampler", "inputs": {"model": [node_id, 0]}}
            graph[f"save{index}"] = {"class_type": "SaveImage", "inputs": {"images": [f"sampler{index}", 0]}}
    return json.dumps(graph)


def test_comfyui_checkpoint_loader_is_named_without_its_folder():
    [item] = evidence_of(png_bytes({"prompt": comfy_graph(("sub\\animatrix_v20.safetensors", True))}))
    assert (item.source, item.generator, item.indicates_ai) == ("comfyui", "animatrix_v20.safetensors", True)
    assert "CheckpointLoaderSimple node 10 loads 'sub\\animatrix_v20.safetensors'" in item.detail


def test_comfyui_loader_not_feeding_a_save_node_is_left_out():
    raw = png_bytes({"prompt": comfy_graph(("used.safetensors", True), ("unused.ckpt", False))})
    assert [item.generator for item in evidence_of(raw)] == ["used.safetensors"]


def test_comfyui_two_wired_checkpoints_are_both_reported_as_ambiguous():
    raw = png_bytes({"prompt": comfy_graph(("a.safetensors", True), ("b.safetensors", True))})
    items = evidence_of(raw)
    assert [item.generator for item in items] == ["a.safetensors", "b.safetensors"]
    assert all("one of 2 models" in item.detail for item in items)


def test_comfyui_workflow_only_skips_bypassed_loaders():
    workflow = {
        "nodes": [
            {
                "type": "CheckpointLoader",
                "mode": 0,
                "widgets_values": ["v1-inference.yaml", "x/model-a.ckpt"],
            },
            {"type": "CheckpointLoaderSimple", "mode": 4, "widgets_values": ["bypassed.safetensors"]},
            {"type": "KSampler", "mode": 0, "widgets_values": [1, "fixed", 20]},
        ]
    }
    [item] = evidence_of(png_bytes({"workflow": json.dumps(workflow)}))
    assert (item.source, item.generator, item.indicates_ai) == ("comfyui", "model-a.ckpt", True)
    assert "no executed 'prompt' graph" in item.detail


@pytest.mark.parametrize(
    "prompt",
    [
        '{"3": {"class_type": "KSampler", "inputs": {',  # cut off
        "not json at all",
        "[" * 100_000 + "]" * 100_000,  # nested too deeply for the parser
        json.dumps([1, 2, 3]),  # JSON, not a graph
        json.dumps({"1": "x", "2": {"class_type": 5, "inputs": [1, 2]}}),
    ],
)
def test_comfyui_unreadable_prompt_is_one_unknown_item(prompt):
    [item] = evidence_of(png_bytes({"prompt": prompt}))
    assert (item.source, item.generator, item.indicates_ai) == ("comfyui", None, None)


def test_comfyui_graph_with_wrong_types_and_a_cycle_does_not_crash():
    graph = {
        "1": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": ["2", 0]},
        },  # a link, not a name
        "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "x": [None], "y": []}},  # cycle
        "4": {"class_type": "UNETLoader", "inputs": {"unet_name": 12}},
    }
    [item] = evidence_of(png_bytes({"prompt": json.dumps(graph)}))
    assert (item.source, item.generator, item.indicates_ai) == ("comfyui", None, True)  # a sampler, no model
    assert "no model loader we recognise" in item.detail


@pytest.mark.parametrize("chunk", ["tEXt", "zTXt", "iTXt"])
def test_a_prompt_longer_than_the_loader_keeps_is_reread_from_the_raw_png(chunk):
    graph = json.loads(comfy_graph(("long.safetensors", True)))
    graph["99"] = {"class_type": "Note", "inputs": {"text": "x" * (MAX_METADATA_CHARS + 10)}}
    value = json.dumps(graph)
    raw = png_bytes(
        itxt={"prompt": value} if chunk == "iTXt" else None,
        text={"prompt": value} if chunk != "iTXt" else None,
        zip_text=chunk != "tEXt",
    )
    assert [item.generator for item in evidence_of(raw)] == ["long.safetensors"]
    [cut] = evidence_of(raw, with_raw=False)
    assert (cut.generator, cut.indicates_ai) == (None, None)
    assert "cut short by the image loader" in cut.detail


XMP_ATTRIBUTES = (
    '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
    'xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
    'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    'xmp:CreatorTool="Example Diffusion 2.1 &amp; friends" '
    f'Iptc4xmpExt:DigitalSourceType="{IPTC}trainedAlgorithmicMedia"/></rdf:RDF></x:xmpmeta>'
)
XMP_ELEMENTS = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description>'
    "<xmp:CreatorTool>ExampleCam 3</xmp:CreatorTool>"
    f"<Iptc4xmpExt:DigitalSourceType>{IPTC}digitalCapture</Iptc4xmpExt:DigitalSourceType>"
    "</rdf:Description></rdf:RDF></x:xmpmeta>"
)


def test_xmp_ai_source_type_names_the_creator_tool():
    [item] = evidence_of(png_bytes(itxt={"XML:com.adobe.xmp": XMP_ATTRIBUTES}))
    assert (item.source, item.generator, item.indicates_ai) == (
        "xmp",
        "Example Diffusion 2.1 & friends",
        True,
    )
    assert "DigitalSourceType 'trainedAlgorithmicMedia' (an AI marker)" in item.detail


def test_xmp_human_source_type_with_an_unknown_tool():
    [item] = evidence_of(png_bytes(itxt={"XML:com.adobe.xmp": XMP_ELEMENTS}))
    assert (item.source, item.generator, item.indicates_ai) == ("xmp", None, False)
    assert "DigitalSourceType 'digitalCapture' (declares a non-AI source)" in item.detail
    assert "CreatorTool 'ExampleCam 3' (not a program known" in item.detail


def test_xmp_composite_source_type_alone_marks_ai_without_a_name():
    packet = f'<rdf:Description Iptc4xmpExt:DigitalSourceType="{IPTC}compositeWithTrainedAlgorithmicMedia"/>'
    [item] = evidence_of(png_bytes(itxt={"XML:com.adobe.xmp": packet}))
    assert (item.source, item.generator, item.indicates_ai) == ("xmp", None, True)


@pytest.mark.parametrize(
    ("software", "generator", "indicates_ai"),
    [
        ("Adobe Photoshop 24.0 (Windows)", None, False),
        ("Stable Diffusion XL", "Stable Diffusion XL", True),
        ("ExampleCam firmware 1.0", None, None),
    ],
)
def test_exif_software_in_jpeg(software, generator, indicates_ai):
    exif = Image.Exif()
    exif[0x0131] = software
    [item] = evidence_of(jpeg_bytes(exif))
    assert (item.source, item.generator, item.indicates_ai) == ("exif-software", generator, indicates_ai)


def test_png_software_chunk_of_a_drawing_program():
    [item] = evidence_of(png_bytes({"Software": "CLIP STUDIO PAINT"}))
    assert (item.source, item.generator, item.indicates_ai) == ("png-software", None, False)


def test_c2pa_in_png_cabx_with_ai_source_type():
    claim = cbor_text("claim_generator") + cbor_text("FakeGen/1.0 c2pa-rs/0.1")
    raw = with_png_chunk(png_bytes(), b"caBX", fake_c2pa(claim, ai_source=True))
    [item] = evidence_of(raw)
    assert (item.source, item.generator, item.indicates_ai) == ("c2pa", "FakeGen/1.0 c2pa-rs/0.1", True)
    assert "PNG caBX chunk" in item.detail and "signature NOT validated" in item.detail
    assert evidence_of(raw, with_raw=False) == []  # C2PA needs the raw bytes


def test_c2pa_presence_alone_is_no_ai_marker():
    claim = cbor_text("claim_generator") + cbor_text("ExampleCam Firmware 1.2")
    [item] = evidence_of(with_png_chunk(png_bytes(), b"caBX", fake_c2pa(claim, ai_source=False)))
    assert (item.source, item.generator, item.indicates_ai) == ("c2pa", None, None)
    assert "claim_generator 'ExampleCam Firmware 1.2'" in item.detail


def test_c2pa_in_jpeg_app11_with_claim_generator_info():
    claim = cbor_text("claim_generator_info") + b"\x81\xa2" + cbor_text("name") + cbor_text("Example Studio")
    payload = b"JP" + b"\x00\x01" + struct.pack(">I", 1) + fake_c2pa(claim, ai_source=True)
    [item] = evidence_of(with_jpeg_app11(jpeg_bytes(), payload))
    assert (item.source, item.generator, item.indicates_ai) == ("c2pa", "Example Studio", True)
    assert "JPEG APP11 segments" in item.detail


def test_plain_image_has_no_evidence():
    assert evidence_of(png_bytes()) == []
    assert evidence_of(jpeg_bytes()) == []


# ----------------------------------------------------------------------------------------------
# Robustness and the summary
# ----------------------------------------------------------------------------------------------


def test_junk_never_raises_and_names_only_with_an_ai_marker():
    rng = np.random.default_rng(1)
    junk = "".join(chr(int(c)) for c in rng.integers(1, 0x2FF, 5000))
    text = {key: junk for key in ("parameters", "Software", "Source", "Comment", "prompt", "workflow")}
    text["Software"] = "NovelAI"
    cases = [
        png_bytes(text),
        png_bytes({"parameters": "Steps:" + ' a: "' * 20_000}),  # unterminated quotes, long line
        png_bytes({"parameters": "Steps: " + "x" * 200_000}),
        png_bytes(itxt={"XML:com.adobe.xmp": "<" * 50_000 + "CreatorTool=" + '"' * 10}),
        with_png_chunk(png_bytes(), b"caBX", rng.bytes(3000) + b"claim_generator\x7f\xff"),
        with_png_chunk(png_bytes(), b"caBX", b""),
        with_jpeg_app11(jpeg_bytes(), b"jumb c2pa claim_generator\x79\xff\xff"),
    ]
    for raw in cases:
        for item in evidence_of(raw):
            assert isinstance(item, Evidence) and isinstance(item.detail, str)
            assert item.indicates_ai in (True, False, None)
            assert item.generator is None or item.indicates_ai is True
    for raw in (
        b"\x89PNG\r\n\x1a\n" + rng.bytes(500),
        b"\xff\xd8" + rng.bytes(500),
        b"RIFF\xff\xff\xff\xffWEBP",
    ):
        assert evidence_module._find_c2pa(raw) is None  # damaged containers: nothing, no exception


def test_a_failing_reader_becomes_an_unreadable_item(monkeypatch):
    def broken(text):
        raise KeyError("boom")

    readers = tuple(
        (source, broken if source == "xmp" else reader) for source, reader in evidence_module._READERS
    )
    monkeypatch.setattr(evidence_module, "_READERS", readers)
    items = evidence_of(png_bytes({"Software": "Krita"}))
    assert [(item.source, item.indicates_ai) for item in items] == [("png-software", False), ("xmp", None)]
    assert items[1].detail == "could not be read (KeyError)"


def test_summary_is_json_ready_and_combines_items():
    items = evidence_of(png_bytes({"Software": "NovelAI", "Source": "Stable Diffusion 81274D13"}))
    items += evidence_of(jpeg_bytes(_exif_software("Adobe Photoshop")))
    summary = json.loads(json.dumps(evidence_summary(items)))
    assert summary["named_generators"] == ["NovelAI (Stable Diffusion 81274D13)"]
    assert summary["indicates_ai"] is True  # an AI marker outweighs "saved by Photoshop"
    assert [entry["source"] for entry in summary["items"]] == ["novelai", "exif-software"]
    assert summary["caveat"] == METADATA_CAVEAT
    assert evidence_summary(items[1:])["indicates_ai"] is False
    assert evidence_summary([]) == {
        "items": [],
        "named_generators": [],
        "indicates_ai": None,
        "caveat": METADATA_CAVEAT,
    }


def _exif_software(name: str) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0131] = name
    return exif
