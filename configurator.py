"""
configurator.py: settings overrides for every stage script, in the spirit of nanoGPT's configurator.

    python sft.py config/sft_paper.py --lr=2e-5 --out_dir=out/sft_lr2e-5

Every script keeps its settings as plain lower-case module globals and calls `settings = configure(globals())` right
after them (inside main() where the script has one); it prints the settings it changed.
Each positional argument is a Python config file executed over those globals; each `--key=value` replaces
one setting, the value parsed as a Python literal when it is one (numbers, True/False, None, lists) and
kept as a string otherwise. A setting that does not exist, or a value of a different type, is an error:
a typo must not silently train with the default.
"""

import ast
import os
import sys


def configure(settings, argv=None):
    """Apply config files and --key=value overrides to `settings` (a script's globals(), changed in place); print
    what was changed (on rank 0 only) and return every setting's value. Settings are the lower-case names bound to
    a number, string, bool, None, list or tuple; UPPER_CASE names are constants."""
    argv = sys.argv[1:] if argv is None else argv
    known = {k for k, v in settings.items() if k.islower() and not k.startswith("_")
             and isinstance(v, (int, float, bool, str, type(None), list, tuple))}
    applied = []
    for arg in argv:
        if not arg.startswith("--"):
            before = {k: settings[k] for k in known}
            with open(arg) as f:
                exec(f.read(), settings)
            unknown = sorted(k for k, v in settings.items() if k not in known and k.islower() and not k.startswith("_")
                             and isinstance(v, (int, float, bool, str, type(None), list, tuple)))
            if unknown:
                raise SystemExit(f"{arg} sets unknown setting(s) {', '.join(unknown)}")
            applied += [f"{k}={settings[k]!r} ({arg})" for k in sorted(known) if settings[k] != before[k]]
            continue
        key, sep, value = arg[2:].partition("=")
        if not sep:
            key, value = key, "True"  # `--resume` alone means --resume=True
        if key not in known:
            raise SystemExit(f"unknown setting --{key} (settings: {', '.join(sorted(known))})")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        old = settings[key]
        if old is not None and parsed is not None and not isinstance(parsed, type(old)):
            if isinstance(old, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
                parsed = float(parsed)
            elif isinstance(old, str):
                parsed = value
            else:
                raise SystemExit(f"--{key}={value}: expected {type(old).__name__}, got {type(parsed).__name__}")
        settings[key] = parsed
        applied.append(f"{key}={parsed!r}")
    if applied and os.environ.get("RANK", "0") == "0":
        print("settings changed: " + ", ".join(applied), flush=True)
    return {k: settings[k] for k in sorted(known)}
