"""The container images' recipes (docker/*.Dockerfile) and the chart's image defaults.

There is no container engine on the project's machines, so the images are not built
here: this checks what the Dockerfiles promise (multi-stage, a runtime stage with no
shell and no package manager, a non-root user, the binary built with --locked and the
right features) and that the Helm chart's default image names and tag are what the
documented build commands produce. `scripts/reproducible-build` runs the build stage's
compiler invocation twice and compares the binaries."""

import json
import pathlib
import re
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES = {
    "llmstack-server": {"port": "8001", "features": "--no-default-features --features kube,otel"},
    "llmstack-sim": {"port": "8000", "features": None},
}


def stages(binary):
    """The Dockerfile's stages: [(FROM line, [instructions])], continuation lines joined."""
    text = (ROOT / "docker" / f"{binary}.Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word = line.split()[0].upper()
        if word == "FROM":
            out.append((line, []))
        else:
            assert out, f"{binary}: {line!r} before the first FROM"
            out[-1][1].append((word, line[len(word):].strip()))
    return out


def test_images_are_multi_stage_non_root_and_shell_free():
    for binary, want in IMAGES.items():
        build, runtime = stages(binary)[0], stages(binary)[-1]
        assert len(stages(binary)) >= 2, binary
        # The build stage: the project's toolchain, the lockfile, one binary.
        assert re.search(r"rust:1\.95\b", build[0]), build[0]
        runs = " ".join(arg for word, arg in build[1] if word == "RUN")
        assert f"cargo build --release --locked -p {binary}" in runs, runs
        if want["features"]:
            assert want["features"] in runs, runs
        else:
            assert "--features" not in runs, runs
        # The runtime stage: distroless (no shell, so no RUN can work there), non-root.
        assert "gcr.io/distroless/" in runtime[0], runtime[0]
        words = [word for word, _ in runtime[1]]
        assert "RUN" not in words, f"{binary}: the runtime image has no shell"
        user = [arg for word, arg in runtime[1] if word == "USER"]
        assert user and user[-1].split(":")[0] not in ("0", "root"), user
        assert int(user[-1].split(":")[0]) >= 1000, user
        entry = [arg for word, arg in runtime[1] if word == "ENTRYPOINT"]
        assert json.loads(entry[-1]) == [f"/usr/local/bin/{binary}"], entry
        copied = [arg for word, arg in runtime[1] if word == "COPY"]
        assert any(f"/usr/local/bin/{binary}" in c and "--from=" in c for c in copied), copied
        assert [arg for word, arg in runtime[1] if word == "EXPOSE"] == [want["port"]]
        cmd = json.loads([arg for word, arg in runtime[1] if word == "CMD"][-1])
        assert cmd[:2] == ["--host", "0.0.0.0"], cmd


def test_the_build_context_leaves_out_build_output():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignored and ".git/" in ignored


def test_the_chart_defaults_name_the_images_these_recipes_build():
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]
    chart = yaml.safe_load((ROOT / "helm/llmstack/Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "helm/llmstack/values.yaml").read_text())
    # The documented build tags images with the workspace version: the chart's appVersion,
    # which is the default tag when routerSpec.tag / simTag are empty.
    assert chart["appVersion"] == workspace["version"]
    assert values["routerSpec"]["repository"] == "ghcr.io/llmstack/llmstack-server"
    assert values["routerSpec"]["tag"] in ("", None)
    assert values["servingEngineSpec"]["simRepository"] == "ghcr.io/llmstack/llmstack-sim"
    assert values["servingEngineSpec"].get("simTag") in ("", None)
    docs = (ROOT / "docs/containers.md").read_text()
    for binary in IMAGES:
        tag = f"ghcr.io/llmstack/{binary}:{workspace['version']}"
        assert f"-f docker/{binary}.Dockerfile" in docs and tag in docs, tag
