"""Builds a Dockerfile's stages without a container engine; used by lint.py.

No registry for base images is reachable in CI, and no container engine runs
there, so `docker build` cannot be the check. Instead each stage is replayed
on the host, instruction by instruction, in a directory of its own that
stands for the stage's filesystem:

  * FROM <earlier stage> starts from a copy of that stage's directory; FROM
    an image starts empty, and the host provides what the image would (the
    Rust toolchain, sh, find, install).
  * COPY takes exactly the named files: from the build context (the checkout
    minus .dockerignore) or, with --from, from an earlier stage's directory.
  * RUN runs the command with /bin/sh -c in the stage's WORKDIR, with
    absolute paths outside the usual system directories (/src, /out) mapped
    into the stage's directory.
  * WORKDIR, USER, ENTRYPOINT, EXPOSE, LABEL are recorded; any other
    instruction fails the check, so nothing is silently skipped.

Cargo runs exactly as written (same commands, same `--locked`, same profile
names, so an undefined profile fails) except that every profile named is
made cheap by a .cargo/config.toml above the stages (no optimisation, no
LTO, no debug info): compiling the release-lto dataplane twice per CI run would
take longer than all the tests. The target directory is shared between the
stages and kept under target/ between runs, as a warm build cache would be;
the stages' own sources are rebuilt whenever they change, as in Docker.

What passing proves: the manifest-only stage loads the workspace and builds
the dependencies with --locked; the source stage compiles with exactly the
files it copies; the final stage holds the binary its ENTRYPOINT names, and
that binary runs. What it does not prove: that the base images exist and
carry what the binary needs (checked separately from the binary's shared
libraries), that the release profiles' optimisations compile (the workspace
tests and `bench/` build those), and BuildKit's cache behaviour.
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import re
import shlex
import shutil
import subprocess

import dockerfile

# Top-level directories of the host that RUN commands keep: tools and their
# files live there. Any other absolute path belongs to the stage.
SYSTEM_DIRS = {"bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt",
               "opt", "proc", "root", "run", "sbin", "srv", "sys", "tmp", "usr", "var"}
ABS_PATH = re.compile(r"(?<![^\s'\"=:])/([A-Za-z0-9_.-]+)")
PROFILE = re.compile(r"cargo\s+(?:\+\S+\s+)?\w+[^;&|]*?(?:--profile[= ](?P<name>[\w-]+)|(?P<release>--release\b))")


class StageError(AssertionError):
    pass


def dockerignore_patterns(root: pathlib.Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes `rel` (plain names, globs, **/ prefixes, ! exceptions)."""
    parts = pathlib.PurePosixPath(rel).parts
    out = False
    for raw in patterns:
        negate, pat = raw.startswith("!"), raw.lstrip("!").strip()
        anywhere, pat = pat.startswith("**/"), pat.removeprefix("**/").strip("/")
        hit = any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) or (anywhere and fnmatch.fnmatchcase(parts[i - 1], pat))
                  for i in range(1, len(parts) + 1))
        if hit:
            out = not negate
    return out


def build_context(root: pathlib.Path, dest: pathlib.Path):
    """The files `docker build .` would send: the checkout minus .dockerignore."""
    patterns = dockerignore_patterns(root)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = pathlib.Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if not ignored(str(rel_dir / d), patterns)]
        for name in filenames:
            rel = rel_dir / name
            if not ignored(str(rel), patterns):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / rel, dest / rel, follow_symlinks=False)


class Stage:
    def __init__(self, name: str, base: str, root: pathlib.Path):
        self.name, self.base, self.root = name, base, root
        self.workdir = "/"
        self.user: str | None = None
        self.entrypoint: list[str] | None = None
        self.exposed: list[int] = []
        # ("COPY", "<stage or context>:<src>") and ("RUN", command), in order.
        self.steps: list[tuple[str, str]] = []

    def path(self, p: str, cwd: str | None = None) -> pathlib.Path:
        """Where the stage's path `p` is on the host."""
        full = p if p.startswith("/") else os.path.join(cwd or self.workdir, p)
        return self.root / os.path.normpath(full).lstrip("/")


def _copy(src: pathlib.Path, dest: pathlib.Path, dest_is_dir: bool):
    if src.is_dir():  # a directory's contents, as Docker copies them
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        return
    if not src.exists():
        raise StageError(f"COPY source {src} does not exist")
    if dest_is_dir or dest.is_dir():
        dest = dest / src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest, follow_symlinks=False)


def cheap_profiles(command: str) -> str:
    """Cargo config (TOML) making each profile a cargo command names cheap."""
    out = []
    for m in PROFILE.finditer(command):
        name = "release" if m.group("release") else m.group("name")
        out.append(f'[profile.{name}]\nopt-level = 0\nlto = false\ncodegen-units = 256\n'
                   f'debug = false\nincremental = false\nstrip = "none"\n')
    return "\n".join(dict.fromkeys(out))


def build(dockerfile_path: pathlib.Path, checkout: pathlib.Path, work: pathlib.Path,
          cargo_target: pathlib.Path, log) -> list[Stage]:
    """Replays every stage of `dockerfile_path` under `work` (emptied first).

    Returns the stages in order; raises StageError naming the instruction
    that failed, with the command's output."""
    if work.exists():
        shutil.rmtree(work)
    context = work / "context"
    context.mkdir(parents=True)
    build_context(checkout, context)
    cargo_target.mkdir(parents=True, exist_ok=True)
    stages: list[Stage] = []
    by_name: dict[str, Stage] = {}
    for cmd in dockerfile.parse_file(str(dockerfile_path)):
        where = f"{dockerfile_path.name}:{cmd.start_line} {cmd.cmd}"
        if cmd.cmd == "FROM":
            value = list(cmd.value)
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else f"stage{len(stages)}"
            stage = Stage(name, value[0], work / "stages" / f"{len(stages)}-{name}")
            if value[0] in by_name:
                shutil.copytree(by_name[value[0]].root, stage.root, symlinks=True)
                stage.workdir = by_name[value[0]].workdir
            else:
                stage.root.mkdir(parents=True)
            stages.append(stage)
            by_name[name] = stage
            continue
        if not stages:
            raise StageError(f"{where}: before any FROM")
        stage = stages[-1]
        if cmd.cmd == "WORKDIR":
            stage.workdir = os.path.normpath(os.path.join(stage.workdir, cmd.value[0]))
            stage.path(stage.workdir).mkdir(parents=True, exist_ok=True)
        elif cmd.cmd in ("COPY", "ADD"):
            if cmd.cmd == "ADD":
                raise StageError(f"{where}: use COPY (ADD fetches and unpacks; not reproduced)")
            source = None
            for flag in cmd.flags:
                if flag.startswith("--from="):
                    source = by_name.get(flag.split("=", 1)[1])
                    if source is None:
                        raise StageError(f"{where}: --from names no earlier stage ({flag})")
                elif flag != "--link":
                    raise StageError(f"{where}: flag {flag} is not reproduced")
            *srcs, dest = cmd.value
            for src in srcs:
                if any(ch in src for ch in "*?["):
                    raise StageError(f"{where}: globs are not reproduced ({src})")
                host_src = source.path(src, "/") if source else context / src
                if not host_src.exists():
                    raise StageError(f"{where}: {src} is not in the "
                                     + (f"stage {source.name}" if source else "build context (.dockerignore?)"))
                _copy(host_src, stage.path(dest), dest.endswith("/") or len(srcs) > 1)
                stage.steps.append(("COPY", f"{source.name if source else 'context'}:{src}"))
        elif cmd.cmd == "RUN":
            if cmd.flags:
                raise StageError(f"{where}: RUN flags {cmd.flags} are not reproduced")
            command = " ".join(cmd.value)
            if cmd.json:
                command = shlex.join(cmd.value)
            stage.steps.append(("RUN", command))
            mapped = ABS_PATH.sub(lambda m: m.group(0) if m.group(1) in SYSTEM_DIRS
                                  else str(stage.root / m.group(1)), command)
            cwd = stage.path(stage.workdir)
            cwd.mkdir(parents=True, exist_ok=True)
            if re.search(r"\bcargo\b", command) and not (cwd / "target").exists():
                (cwd / "target").symlink_to(cargo_target, target_is_directory=True)
            # Cargo reads .cargo/config.toml of every directory above its own:
            # one above the stage's root, outside what the image would hold.
            # (CARGO_PROFILE_* variables cannot name profiles with a dash.)
            config = work / ".cargo" / "config.toml"
            config.parent.mkdir(exist_ok=True)
            config.write_text(cheap_profiles(command))
            env = dict(os.environ) | {"CARGO_TERM_COLOR": "never"}
            env.pop("CARGO_TARGET_DIR", None)
            log(f"{where}: {command[:100]}{'...' if len(command) > 100 else ''}")
            proc = subprocess.run(["/bin/sh", "-c", mapped], cwd=cwd, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                tail = "\n    ".join(proc.stdout.strip().splitlines()[-15:])
                raise StageError(f"{where} failed (exit {proc.returncode}) in stage {stage.name}:\n    {tail}")
        elif cmd.cmd == "USER":
            stage.user = cmd.value[0]
        elif cmd.cmd == "ENTRYPOINT":
            stage.entrypoint = list(cmd.value) if cmd.json else ["/bin/sh", "-c", " ".join(cmd.value)]
        elif cmd.cmd == "EXPOSE":
            stage.exposed += [int(p.split("/")[0]) for p in cmd.value]
        elif cmd.cmd == "LABEL":
            pass
        else:
            raise StageError(f"{where}: instruction not reproduced by charts/dockerfile_stages.py")
    if not stages:
        raise StageError(f"{dockerfile_path.name}: no FROM")
    return stages


# What gcr.io/distroless/cc-debian12 carries (glibc, libgcc_s, libstdc++,
# libgomp), and the kernel's vDSO.
DISTROLESS_CC_LIBS = ("linux-vdso.so", "ld-linux", "libc.so", "libm.so", "libdl.so", "libpthread.so",
                      "librt.so", "libgcc_s.so", "libstdc++.so", "libgomp.so")


def shared_libraries(binary: pathlib.Path) -> list[str]:
    """The shared libraries the dynamic linker loads for `binary` (ldd)."""
    proc = subprocess.run(["ldd", str(binary)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise StageError(f"ldd {binary}: {proc.stdout.strip()}")
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
