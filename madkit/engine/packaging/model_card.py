"""The model card (README.md) of an export: what the model is, its size and sampling cost, where its
weights came from, and the evaluations recorded for exactly these weights. Only known numbers are
written; nothing is estimated. The card opens with the hub's metadata block (YAML, written by
``huggingface_hub.ModelCardData``): library, tags, pipeline tag and, where the data says it, license."""

from __future__ import annotations

from typing import Any


def _row(name: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:,}"
    elif isinstance(value, float):
        value = f"{value:.3g}"
    return f"| {name} | {value} |"


def _provenance(provenance: dict[str, Any]) -> list[str]:
    if provenance.get("source") == "reference-import":
        lines = [
            f"Imported with `madkit import-reference` from `{provenance.get('source_file')}` "
            f"(sha256 `{provenance.get('sha256')}`), using its `{provenance.get('weights_key')}` weights.",
        ]
        args = provenance.get("args") or {}
        if args:
            shown = ", ".join(
                f"{k}={args[k]}" for k in sorted(args) if k in ("ar_len", "block_size", "diff_depth", "image_size")
            )
            lines.append(f"Training arguments stored in that file include: {shown or '(none of the geometry)'}.")
        return lines
    return [f"Trained with madkit (run `{provenance.get('run')}`, step {provenance.get('step')}); EMA weights."]


# the license of data madkit ships or names: weights trained on it carry it
_DATA_LICENSES = {"openmoji": "cc-by-sa-4.0"}


def hub_metadata(spec: dict[str, Any], experiment) -> str:
    """The ``---``-fenced YAML block the hub reads (``huggingface_hub.ModelCardData``)."""
    from huggingface_hub import ModelCardData

    model_kind, data_kind = spec.get("model", {}).get("kind"), spec.get("data", {}).get("kind")
    conditional = experiment.num_classes > 0 and spec.get("model", {}).get("conditioning") == "class"
    data = ModelCardData(
        library_name="madkit",
        license=_DATA_LICENSES.get(data_kind),
        tags=["madkit", str(model_kind), "diffusion", "autoregressive", "image-generation",
              "class-conditional" if conditional else "unconditional"],
        pipeline_tag=None if conditional else "unconditional-image-generation",
    )
    return f"---\n{data.to_yaml()}\n---\n"


def model_card(
    spec: dict[str, Any],
    experiment,
    provenance: dict[str, Any],
    cost: dict[str, Any] | None,
    records: list[dict[str, Any]],
) -> str:
    """Markdown for README.md. ``experiment`` is the spec built on the meta device; ``records`` are
    eval records of these weights (``madkit eval``)."""
    name = spec.get("name", "model")
    model, sampler = spec.get("model", {}), spec.get("sampler", {})
    lines = [
        hub_metadata(spec, experiment),
        f"# {name}",
        "",
        f"A `{model.get('kind')}` model exported by madkit: EMA weights and the resolved spec.",
        "",
    ]
    lines += ["| | |", "|---|---|"]
    lines.append(_row("image", "x".join(str(s) for s in experiment.image_shape)))
    lines.append(_row("latent", f"{'x'.join(str(s) for s in experiment.latent_shape)} (codec {spec['codec']['kind']})"))
    if cost:
        lines.append(_row("parameters", cost["parameters"]))
        lines.append(_row("blocks T x tokens per block B", f"{cost['blocks']} x {cost['tokens_per_block']}"))
        lines.append(_row("layers N / diffusion layers D", f"{cost['depth']} / {cost['diffusion_depth']}"))
    lines.append(_row("sampler", f"{sampler.get('kind')}, {sampler.get('steps')} steps per block"))
    if cost and cost.get("sample_flops_per_image") is not None:
        lines.append(_row("sampling FLOPs per image (KV cache)", float(cost["sample_flops_per_image"])))
    lines += ["", "## Provenance", "", *_provenance(provenance), ""]
    lines += ["## Evaluations", ""]
    if records:
        lines += ["| metric | value | extractor | sampler | steps | images |", "|---|---|---|---|---|---|"]
        for r in records:
            for metric, value in r["metric_values"].items():
                s = r["sampling"]
                lines.append(
                    f"| {metric} | {value:.4f} | {r['extractor']} | {s['sampler']} | {s['steps']} | {s['num']} |"
                )
        lines += ["", "Only values measured with the `inception-v3-compat` extractor compare with published FID.", ""]
    else:
        lines += ["None recorded for these weights (`madkit eval` on the run before exporting adds them here).", ""]
    lines += [
        "## Use",
        "",
        "```bash",
        "madkit sample THIS_FOLDER --num 16 --grid",
        "madkit eval THIS_FOLDER --num 8000",
        "```",
        "",
    ]
    return "\n".join(lines)
