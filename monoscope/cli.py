"""The `monoscope` command: parses a stage's config and calls its `run`; no logic of its own."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext

from monoscope.config_args import add_config_arguments, config_from_args
from monoscope.runtime import configure_threads
from monoscope.train.memory import return_large_blocks_when_freed


def _sites(args: argparse.Namespace) -> None:
    from monoscope.models import load_model

    lm = load_model(args.model)
    print(f"{lm.name}: {type(lm.model).__name__}, {lm.n_layers} layers, d_model {lm.d_model}")
    for name, width in lm.sites().items():
        print(f"{name}\t{width}")


def _plan(args: argparse.Namespace) -> None:
    from monoscope.plan import PlanConfig, format_plan, run

    print(format_plan(run(config_from_args(PlanConfig, args))))


def _harvest(args: argparse.Namespace) -> None:
    from monoscope.distributed import launched_world
    from monoscope.harvest import HarvestConfig, run

    store = run(config_from_args(HarvestConfig, args))
    if launched_world().is_main:  # under torchrun, process 0 says it for all
        print(f"wrote {store.n_tokens:,} tokens x {len(store.sites)} site(s) to {store.path}")


def _train(args: argparse.Namespace) -> None:
    from monoscope.distributed import launched_world
    from monoscope.runtime import resolve_device
    from monoscope.train import TrainConfig, run

    cfg = config_from_args(TrainConfig, args)
    if cfg.nproc > 1 and not launched_world().distributed:
        from monoscope.launch import torchrun

        torchrun(cfg.nproc, args.argv)
        return
    if resolve_device(cfg.device).type == "cpu":
        return_large_blocks_when_freed()  # peak memory on the CPU: see monoscope.train.memory
    sae = run(cfg)
    if not launched_world().is_main:
        return  # process 0 says it for all
    summary = sae.cfg.training
    print(
        f"trained {sae.cfg.arch} SAE ({sae.cfg.n_features:,} features) on "
        f"{summary['tokens']:,} tokens -> {cfg.out}"
    )


def _eval(args: argparse.Namespace) -> None:
    from monoscope.evaluate import EvalConfig, format_table, run

    cfg = config_from_args(EvalConfig, args)
    print(format_table(run(cfg)))
    print(f"wrote {cfg.out_path}")


def _convert(args: argparse.Namespace) -> None:
    from monoscope.sae import convert

    out = convert(
        args.src, to=args.to, out=args.out, overwrite=args.overwrite, verify=args.verify_sae
    )
    print(f"wrote {args.to} SAE to {out}")


def _analyze(args: argparse.Namespace) -> None:
    from monoscope.analyze import AnalyzeConfig, run

    out = run(config_from_args(AnalyzeConfig, args))
    print(f"wrote the feature store {out}; browse it with: monoscope serve {out}")


def _serve(args: argparse.Namespace) -> None:
    from monoscope.serve import serve

    serve(args.db, host=args.host, port=args.port, model=args.model, device=args.device)


def _export_site(args: argparse.Namespace) -> None:
    from monoscope.serve import export_site

    out = export_site(args.db, args.out, shard_size=args.shard_size, similar=args.similar)
    print(f"wrote the static feature browser to {out}; open {out / 'index.html'}")


def _demo(args: argparse.Namespace) -> None:
    from monoscope.demo import DemoConfig, run
    from monoscope.runtime import resolve_device

    if resolve_device("auto").type == "cpu":  # the demo trains where `train` would
        return_large_blocks_when_freed()
    run(config_from_args(DemoConfig, args))


def _steer(args: argparse.Namespace) -> None:
    from monoscope.steer import SteerConfig, run
    from monoscope.steer.report import format_steer

    print(format_steer(run(config_from_args(SteerConfig, args))))


def _attribute(args: argparse.Namespace) -> None:
    from monoscope.steer import AttributeConfig, run
    from monoscope.steer.report import format_attribution

    print(format_attribution(run(config_from_args(AttributeConfig, args))))


def _features_for(args: argparse.Namespace) -> None:
    from monoscope.steer import FeaturesForConfig, run
    from monoscope.steer.report import format_features

    print(format_features(run(config_from_args(FeaturesForConfig, args))))


def _explain(args: argparse.Namespace) -> None:
    from monoscope.interpret import ExplainConfig, run
    from monoscope.interpret.report import format_run

    print(format_run("explain", run(config_from_args(ExplainConfig, args))))


def _score(args: argparse.Namespace) -> None:
    from monoscope.interpret import ScoreConfig, run
    from monoscope.interpret.report import format_run

    print(format_run("score", run(config_from_args(ScoreConfig, args))))


def _specificity(args: argparse.Namespace) -> None:
    from monoscope.interpret import SpecificityConfig, run
    from monoscope.interpret.report import format_specificity

    print(format_specificity(run(config_from_args(SpecificityConfig, args))))


def _neurons(args: argparse.Namespace) -> None:
    from monoscope.interpret import NeuronsConfig, run

    out = run(config_from_args(NeuronsConfig, args))
    print(f"wrote the neurons' feature store {out}; explain it like any other")


def _compare_neurons(args: argparse.Namespace) -> None:
    from monoscope.interpret import CompareNeuronsConfig, run
    from monoscope.interpret.report import format_comparison

    print(format_comparison(run(config_from_args(CompareNeuronsConfig, args))))


def _llm_server(args: argparse.Namespace) -> None:
    from monoscope.interpret import LLMServerConfig, run

    run(config_from_args(LLMServerConfig, args))


SAE_COMMANDS = (
    "eval",
    "analyze",
    "convert",
    "steer",
    "attribute",
    "features-for",
    "serve",
    "score",
    "compare-neurons",
)
"""Commands that load an SAE from a folder: they take --no-verify."""


def _add_no_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-verify",
        dest="verify_sae",
        action="store_false",
        help="load the SAE without checking its files against its checksums.json (they are "
        "checked as they are read; this skips the hashing)",
    )


def _add_interpret_commands(commands) -> None:
    from monoscope.interpret.config import (
        CompareNeuronsConfig,
        ExplainConfig,
        LLMServerConfig,
        NeuronsConfig,
        ScoreConfig,
        SpecificityConfig,
    )

    table = [
        (
            "explain",
            "explain features with an LLM (writes the feature store)",
            ExplainConfig,
            _explain,
            ("db",),
        ),
        (
            "score",
            "score explanations on held-out windows: detection, fuzzing, simulation, embedding",
            ScoreConfig,
            _score,
            ("db",),
        ),
        (
            "specificity",
            "grade windows per activation interval on the paper's 0-3 rubric",
            SpecificityConfig,
            _specificity,
            ("db",),
        ),
        (
            "neurons",
            "a layer's MLP neurons as a dictionary -> their own feature store",
            NeuronsConfig,
            _neurons,
            (),
        ),
        (
            "compare-neurons",
            "features vs neurons: correlations, scores, specificity",
            CompareNeuronsConfig,
            _compare_neurons,
            ("features_db", "neurons_db"),
        ),
        (
            "llm-server",
            "serve an LLM over an OpenAI-compatible HTTP API (127.0.0.1)",
            LLMServerConfig,
            _llm_server,
            (),
        ),
    ]
    for name, help_text, cls, func, positional in table:
        sub = commands.add_parser(name, help=help_text)
        add_config_arguments(sub, cls, rename={}, positional=positional)
        sub.set_defaults(func=func)


def _add_pipeline_commands(commands) -> None:
    """The stages in pipeline order: sites, plan, harvest, train, eval, analyze, convert."""
    from monoscope.analyze import AnalyzeConfig
    from monoscope.evaluate import EvalConfig
    from monoscope.harvest import HarvestConfig
    from monoscope.plan import PlanConfig
    from monoscope.train import TrainConfig

    sites = commands.add_parser("sites", help="list a model's sites with their widths")
    sites.add_argument("model", help="built-in name (smollm2-135m), local folder or hub id")
    sites.set_defaults(func=_sites)

    plan = commands.add_parser(
        "plan", help="memory per GPU, store size, time and fit of an SAE run, before it runs"
    )
    add_config_arguments(plan, PlanConfig, rename={})
    plan.set_defaults(func=_plan)

    harvest = commands.add_parser("harvest", help="store a model's activations on a corpus")
    add_config_arguments(harvest, HarvestConfig, rename={"sites": "site"})
    harvest.set_defaults(func=_harvest)

    train = commands.add_parser("train", help="train a sparse autoencoder on stored activations")
    add_config_arguments(train, TrainConfig, rename={})
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="evaluate an SAE: FVU, L0, dead, loss recovered")
    add_config_arguments(evaluate, EvalConfig, rename={})
    evaluate.set_defaults(func=_eval)

    analyze = commands.add_parser(
        "analyze", help="one pass over stored activations -> the feature store (SQLite)"
    )
    add_config_arguments(analyze, AnalyzeConfig, rename={})
    analyze.set_defaults(func=_analyze)

    convert = commands.add_parser("convert", help="convert an SAE between formats")
    convert.add_argument("src", help="SAE folder: monoscope, SAELens or sparsify format")
    convert.add_argument("--to", required=True, choices=["saelens", "monoscope", "sparsify"])
    convert.add_argument("--out", required=True, help="output folder")
    convert.add_argument("--overwrite", action="store_true", help="replace files in --out")
    convert.set_defaults(func=_convert)


def _add_steer_commands(commands) -> None:
    """Commands that run the model with an SAE: steer, attribute, features-for."""
    from monoscope.steer.config import AttributeConfig, FeaturesForConfig, SteerConfig

    steer = commands.add_parser(
        "steer", help="generate with SAE features clamped, added or ablated"
    )
    add_config_arguments(steer, SteerConfig, rename={"features": "feature", "json_out": "json"})
    steer.set_defaults(func=_steer)

    attribute = commands.add_parser(
        "attribute", help="attribute a next-token prediction to SAE features, check by ablation"
    )
    add_config_arguments(attribute, AttributeConfig, rename={"json_out": "json"})
    attribute.set_defaults(func=_attribute)

    features_for = commands.add_parser(
        "features-for", help="features active on a marked span, or separating two prompt sets"
    )
    add_config_arguments(features_for, FeaturesForConfig, rename={"json_out": "json"})
    features_for.set_defaults(func=_features_for)


def _add_browser_commands(commands) -> None:
    """The feature browser: served live, or exported as a static site."""
    serve = commands.add_parser("serve", help="browse a feature store in the web browser")
    serve.add_argument("db", help="feature store written by `monoscope analyze`")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    serve.add_argument(
        "--model",
        help='model for "what fires", steering and attribution (default: the store\'s model)',
    )
    serve.add_argument(
        "--device",
        default="auto",
        help="device the model and SAE run on: auto (CUDA when present, else the CPU), cpu, "
        "cuda, cuda:N or mps (default: %(default)s)",
    )
    serve.set_defaults(func=_serve)

    export_site = commands.add_parser(
        "export-site", help="write the feature browser as a static site (works from file://)"
    )
    export_site.add_argument("db", help="feature store written by `monoscope analyze`")
    export_site.add_argument(
        "--out",
        required=True,
        help="folder to write (a new or empty one, or a site exported before)",
    )
    export_site.add_argument(
        "--shard-size", type=int, default=256, help="features per data file (default: %(default)s)"
    )
    export_site.add_argument(
        "--similar",
        type=int,
        default=8,
        help="nearest explanations by meaning kept per explained feature, embedded at export "
        "time with the offline sentence embedder (0: none; default: %(default)s)",
    )
    export_site.set_defaults(func=_export_site)


def build_parser() -> argparse.ArgumentParser:
    """Every command, in the order `monoscope --help` lists them."""
    from monoscope.demo import DemoConfig

    parser = argparse.ArgumentParser(
        prog="monoscope", description="Dictionary learning on language models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_pipeline_commands(commands)
    _add_steer_commands(commands)
    _add_browser_commands(commands)
    _add_interpret_commands(commands)
    for name in SAE_COMMANDS:
        _add_no_verify(commands.choices[name])

    demo = commands.add_parser("demo", help="the whole pipeline on the built-in model and corpus")
    add_config_arguments(demo, DemoConfig, rename={})
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. A process torchrun started ends here, at once."""
    code = _run_command(sys.argv[1:] if argv is None else argv)
    from monoscope.distributed import launched_world

    if launched_world().distributed:
        # Past the work (the process group already left): skip the interpreter's teardown,
        # where gloo's worker threads have aborted a finished process (SIGABRT) now and then.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run_command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv  # `train --nproc` starts the same command in several processes
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for a 1 s load are noise here
    configure_threads()  # every core (torch may count 1 on a small VM); MONOSCOPE_THREADS
    try:
        with _sae_verification(args):
            args.func(args)
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        # Bad input, known failures and missing extras get one clear line, not a traceback.
        print(f"monoscope {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # --overwrite would start over: the same command without it resumes.
        rerun = "without --overwrite" if getattr(args, "overwrite", False) else "the same command"
        detail = f" ({err})" if str(err) else ""
        print(
            f"monoscope {args.command}: interrupted{detail}; rerun {rerun} to resume",
            file=sys.stderr,
        )
        return 130
    return 0


def _sae_verification(args: argparse.Namespace):
    """What --no-verify asks of every SAE load inside the command."""
    if getattr(args, "verify_sae", True):
        return nullcontext()
    from monoscope.sae.checksums import verification

    return verification(False)


if __name__ == "__main__":
    sys.exit(main())
