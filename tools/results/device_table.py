"""What BatchNorm recalibration recovers under each device model: one table, one command.

    python -m tools.results.device_table [--models sample_models/resnet_bn.onnx,...] [--seeds 3] [--report out.md]

For every device setting below and every model, ``nabn_onnx.sweep`` simulates ``--seeds``
chips and reports the top-1 of the clean model, of the chip as is (vanilla) and after
NaBN calibration (method auto), mean ± std over chips, on the digits samples. Settings:
aihwkit's PCM at 1 h and 1 year (with and without global drift compensation), aihwkit's
ReRAM models (Wan 2022 at 1 day, CMO/HfOx at 1 day), and the faults on an otherwise ideal
pair (16 conductance levels, 1 % and 5 % stuck devices, clipping at 2.5 sigma). ``eta``
scales the devices' programming and read noise (1 = as measured).

A second table does the same for the analog periphery inserted as graph ops
(``nabn_onnx.passes.analog_io``): output noise, ADC and DAC in aihwkit's units, clean
weights; vanilla is the model with the periphery, NaBN is ``calibrate(..., reference=clean)``
(method auto) on it, both evaluated with the periphery in place (output noise drawn per batch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nabn_onnx import sweep

ROOT = Path(__file__).resolve().parents[2]

DAY, YEAR = 86400.0, 365 * 86400.0
SETTINGS = [
    ("PCM, 1 h", "pcm", 1.0, {"t_inference": 3600.0}),
    ("PCM, 1 year", "pcm", 1.0, {"t_inference": YEAR}),
    ("PCM, 1 year, GDC", "pcm", 1.0, {"t_inference": YEAR, "compensation": "global"}),
    ("PCM x3 noise, 1 day, GDC", "pcm", 3.0, {"t_inference": DAY, "compensation": "global"}),
    ("RRAM (Wan 2022), 1 day", "rram", 1.0, {"t_inference": DAY}),
    ("RRAM (Wan 2022) x2 noise, 2 days", "rram", 2.0, {"t_inference": 2 * DAY}),
    ("RRAM CMO/HfOx, 1 day", "rram-cmo", 1.0, {"t_inference": DAY}),
    ("ideal pair, 16 levels", "ideal", 1.0, {"levels": 16}),
    ("ideal pair, 1% stuck at g_max", "ideal", 1.0, {"stuck_max": 0.01}),
    ("ideal pair, 5% stuck (g_min and g_max)", "ideal", 1.0, {"stuck_min": 0.025, "stuck_max": 0.025}),
    (
        "PCM 1 day GDC + 32 levels + 0.5% stuck",
        "pcm",
        1.0,
        {"t_inference": DAY, "compensation": "global", "levels": 32, "stuck_min": 0.0025, "stuck_max": 0.0025},
    ),
]


ANALOG = [
    ("aihwkit defaults: noise 0.06, 9-bit ADC at 12, 7-bit DAC", dict(out_noise=0.06, adc_bits=9, dac_bits=7)),
    ("output noise 0.2", dict(out_noise=0.2)),
    ("output noise 0.3, 6-bit ADC, 4-bit DAC", dict(out_noise=0.3, adc_bits=6, dac_bits=4)),
    ("5-bit ADC at 12, 4-bit DAC", dict(adc_bits=5, dac_bits=4)),
    ("5-bit ADC at 4 (clipping), 5-bit DAC", dict(adc_bits=5, out_bound=4.0, dac_bits=5)),
]


def analog_table(models, calib: str, test: str, analog=ANALOG) -> str:
    import copy

    from nabn_onnx import AnalogIO, InsertAnalogIOPass, calibrate, evaluate, load_model

    # not public API (see tools/README.md, "Private names")
    from nabn_onnx.passes.analog_io import measure_input_ranges

    lines = [
        "| periphery | " + " | ".join(f"{m.stem} vanilla | {m.stem} +NaBN" for m in models) + " |",
        "|---|" + "---:|---:|" * len(models),
    ]
    clean = {m: load_model(str(m)) for m in models}
    ranges = {m: measure_input_ranges(clean[m], calib) for m in models}
    for label, settings in analog:
        cells = []
        for m in models:
            analog = copy.deepcopy(clean[m])
            InsertAnalogIOPass(AnalogIO(**settings), ranges[m])(analog)
            calibrated = calibrate(analog, calib, reference=clean[m]).model
            cells += [f"{100 * evaluate(analog, test):.1f}", f"{100 * evaluate(calibrated, test):.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sample_models/resnet_bn.onnx,sample_models/mobilenet_bn.onnx")
    parser.add_argument("--calib", default="sample_models/digits_calib.npz")
    parser.add_argument("--test", default="sample_models/digits_test.npz")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--report", help="also write the table to this .md file")
    parser.add_argument("--only", choices=["devices", "analog"], help="only one of the two tables")
    parser.add_argument("--limit", type=int, help="only the first N settings of each table (a quick check)")
    args = parser.parse_args(argv)
    settings, analog = SETTINGS[: args.limit], ANALOG[: args.limit]
    started = time.perf_counter()
    models = [ROOT / m if not Path(m).is_absolute() else Path(m) for m in args.models.split(",")]
    if args.only == "analog":
        text = analog_table(models, str(ROOT / args.calib), str(ROOT / args.test), analog)
        text += f"\ntop-1 (%) on {Path(args.test).name}; {time.perf_counter() - started:.0f}s\n"
        print()
        print(text)
        if args.report:
            Path(args.report).write_text(text)
        return 0
    header = "| device | " + " | ".join(f"{m.stem} vanilla | {m.stem} +NaBN" for m in models) + " |"
    lines = [header, "|---|" + "---:|---:|" * len(models)]
    clean = {}
    for label, kind, eta, device in settings:
        cells = []
        for model in models:
            report = sweep(
                str(model),
                str(ROOT / args.calib),
                str(ROOT / args.test),
                noise=kind,
                etas=[eta],
                seeds=args.seeds,
                device=device,
            )
            clean[model.stem] = report.clean
            (s,) = report.by_eta()
            cells += [
                f"{100 * s['vanilla_mean']:.1f} ± {100 * s['vanilla_std']:.1f}",
                f"{100 * s['nabn_mean']:.1f} ± {100 * s['nabn_std']:.1f}",
            ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = (
        "\n".join(lines)
        + "\n\nclean: "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in clean.items())
        + (
            f"; top-1 (%) on {Path(args.test).name}, mean ± std over {args.seeds} chips, NaBN method auto; "
            f"{time.perf_counter() - started:.0f}s\n"
        )
    )
    if args.only is None:
        text += "\n" + analog_table(models, str(ROOT / args.calib), str(ROOT / args.test), analog)
    print()
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
