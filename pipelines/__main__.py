"""`python -m pipelines <job>`: batch jobs against the configured database."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from app.core import clock
from app.core.config import get_settings
from app.core.db import make_engine
from app.core.logging import configure_logging
from pipelines.quant_aware import BRANCH_STEPS as BRANCH_DISTIL_STEPS
from pipelines.quant_aware import STEPS as DISTIL_STEPS


def _time(text: str) -> datetime:
    """An ISO 8601 time in app.core.clock's range, as UTC; a usage error otherwise."""
    try:
        return clock.to_utc(datetime.fromisoformat(text))
    except ValueError as exc:  # not ISO 8601, or clock.TimeOutOfRange
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """Parse the job name and its arguments, run it, print a summary."""
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__)
    jobs = parser.add_subparsers(dest="job", required=True)
    rq = jobs.add_parser("requeue", help="queue tickets for analysis again")
    rq.add_argument(
        "--status",
        choices=["failed", "done", "all"],
        default="failed",
        help="which tickets (default: failed)",
    )
    rq.add_argument("--source", default=None, help="only this source")
    rq.add_argument(
        "--received-from",
        type=_time,
        default=None,
        help=f"only tickets received at or after this ISO time ({clock.RANGE_TEXT})",
    )
    ts = jobs.add_parser("train-sentiment", help="train the sentiment model (models/sentiment)")
    ts.add_argument("--data", required=True, help="folder with train.csv and val.csv (text,label)")
    ts.add_argument(
        "--out",
        default=None,
        help="artifact folder (default: SENTIMENT_ARTIFACT, models/sentiment/v1)",
    )
    ts.add_argument("--tap-layer", type=int, default=3, help="encoder layers kept frozen")
    ts.add_argument("--epochs", type=int, default=3)
    ts.add_argument("--lr", type=float, default=1e-4)
    ts.add_argument("--batch-size", type=int, default=32)
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--max-train", type=int, default=0, help="use only the first N (0: all)")
    cl = jobs.add_parser("cluster", help="cluster the recent tickets into recurring issues now")
    cl.add_argument(
        "--window-days", type=int, default=None, help="days back (default: CLUSTER_WINDOW_DAYS)"
    )
    tu = jobs.add_parser("train-uxcx", help="train the UX/CX labeller (models/uxcx)")
    tu.add_argument("--fixtures", default="fixtures/uxcx", help="folder of labelled *.jsonl")
    tu.add_argument(
        "--tweet-labels",
        default="fixtures/uxcx/support_tweets_labels.csv",
        help="tweet_id,label,subcategory for tweets of --tweets",
    )
    tu.add_argument(
        "--tweets",
        default="../shared/datasets/support_tweets/inbound.csv",
        help="support_tweets inbound.csv (skipped when absent)",
    )
    tu.add_argument("--out", default=None, help="artifact folder (default: UXCX_ARTIFACT)")
    tu.add_argument("--version", default=None, help="version name (default: the folder name)")
    tu.add_argument(
        "--database-url", default=None, help="read human corrections here (default: settings)"
    )
    tu.add_argument("--no-overrides", action="store_true", help="ignore human corrections")
    tu.add_argument("--seed", type=int, default=0)
    ta = jobs.add_parser(
        "train-analysis",
        help="train the analysis branch: problem, UX/CX, sub-category, sentiment (models/analysis)",
    )
    ta.add_argument(
        "--datasets",
        default="../shared/datasets",
        help="folder of the real datasets (support_tweets, airline_tweets, app_reviews, "
        "tweeteval_sentiment); without it only fixtures and corrections train",
    )
    ta.add_argument("--fixtures", default="fixtures/uxcx", help="folder of labelled *.jsonl")
    ta.add_argument(
        "--labels",
        default="fixtures/uxcx/real_labels.csv",
        help="source,id,label,subcategory,clarity of real messages (by id)",
    )
    ta.add_argument(
        "--second-reading",
        default="fixtures/uxcx/real_agreement.csv",
        help="the dev split's independent second reading (dev counts where both agree)",
    )
    ta.add_argument(
        "--v1-labels",
        default="fixtures/uxcx/support_tweets_labels.csv",
        help="the first labeller's tweet labels (train side only)",
    )
    ta.add_argument("--out", default=None, help="artifact folder (default: ANALYSIS_ARTIFACT)")
    ta.add_argument("--version", default=None, help="version name (default: the folder name)")
    ta.add_argument("--epochs", type=int, default=4)
    ta.add_argument("--seed", type=int, default=0)
    ta.add_argument("--max-examples", type=int, default=0, help="use only N examples (tests)")
    ta.add_argument(
        "--database-url", default=None, help="read human corrections here (default: settings)"
    )
    ta.add_argument("--no-overrides", action="store_true", help="ignore human corrections")
    ex = jobs.add_parser(
        "export-onnx", help="export the encoder and sentiment branch to ONNX (models/onnx)"
    )
    ex.add_argument("--out", default=None, help="artifact folder (default: ONNX_ARTIFACT)")
    ex.add_argument(
        "--precision",
        choices=["int8", "fp32", "all"],
        default="int8",
        help="int8 (ENCODER_BACKEND=onnx-int8, committed), fp32 (onnx, 90 MB) or all",
    )
    ex.add_argument("--sentiment-artifact", default=None, help="default: SENTIMENT_ARTIFACT")
    ex.add_argument("--analysis-artifact", default=None, help="default: ANALYSIS_ARTIFACT")
    ex.add_argument(
        "--encoder-from",
        default=None,
        help="reuse the encoder graphs of this earlier export (same weights, check passed) "
        "and export only the branches: minutes instead of the distillation's ten",
    )
    ex.add_argument(
        "--datasets",
        default="../shared/datasets",
        help="the real datasets: their dev-split texts are kept out of the distillation",
    )
    ex.add_argument("--fixtures", default="fixtures/uxcx", help="calibration and check texts")
    ex.add_argument("--calibration-texts", type=int, default=600)
    ex.add_argument(
        "--distil-steps",
        type=int,
        default=DISTIL_STEPS,
        help="int8 quantisation-aware distillation steps (0: none; pipelines/quant_aware.py)",
    )
    ex.add_argument(
        "--branch-distil-steps",
        type=int,
        default=BRANCH_DISTIL_STEPS,
        help="int8 quantisation-aware distillation steps of the analysis branch (0: none)",
    )
    ex.add_argument("--banking-train", default="../shared/datasets/banking77/train.csv")
    ex.add_argument("--tweets", default="../shared/datasets/support_tweets/inbound.csv")
    ex.add_argument("--version", default=None, help="version name (default: the folder name)")
    im = jobs.add_parser("import", help="bulk-load posts or tickets from a CSV or JSONL file")
    im.add_argument("file", help="the .csv, .jsonl or .ndjson file")
    im.add_argument("--kind", choices=["posts", "tickets"], default="posts")
    im.add_argument("--format", default=None, help="csv or jsonl (default: from the extension)")
    im.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="read FIELD from COLUMN (a dotted path in JSONL); repeatable",
    )
    im.add_argument("--platform", default=None, help="posts: platform of rows without one")
    im.add_argument("--source", default=None, help="tickets: source of rows without one")
    im.add_argument(
        "--extra-as-metadata", action="store_true", help="keep unmapped columns in metadata"
    )
    im.add_argument("--batch-size", type=int, default=500, help="rows per transaction")
    im.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: DATA_DIR/imports/...)"
    )
    im.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    im.add_argument("--rejects", default=None, help="write every rejected row here as JSONL")
    im.add_argument("--database-url", default=None, help="default: DATABASE_URL")
    im.add_argument("--quiet", action="store_true", help="no progress bar")
    dg = jobs.add_parser("digest", help="write a weekly digest (json, md or html)")
    dg.add_argument("--week", default=None, help="ISO week like 2026-W47 (default: last complete)")
    dg.add_argument("--team", default=None, help="only this team's clusters")
    dg.add_argument("--format", choices=["json", "md", "html"], default="md")
    dg.add_argument("--out", default=None, help="file to write (default: stdout)")
    dg.add_argument("--store", action="store_true", help="also keep it (GET /v1/digests)")
    dg.add_argument("--database-url", default=None, help="default: DATABASE_URL")
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.job == "train-sentiment":
        from pipelines import train_sentiment

        args.out = args.out or str(settings.sentiment_artifact)
        return train_sentiment.main(args)
    if args.job == "train-uxcx":
        from pipelines import train_uxcx

        args.out = args.out or str(settings.uxcx_artifact)
        args.database_url = args.database_url or settings.database_url
        train_uxcx.main(args)
        return 0
    if args.job == "train-analysis":
        from pipelines import train_analysis

        args.out = args.out or str(settings.analysis_artifact)
        args.database_url = args.database_url or settings.database_url
        train_analysis.main(args)
        return 0
    if args.job == "export-onnx":
        from pipelines import export_onnx

        args.out = args.out or str(settings.onnx_artifact)
        args.sentiment_artifact = args.sentiment_artifact or str(settings.sentiment_artifact)
        args.analysis_artifact = args.analysis_artifact or str(settings.analysis_artifact)
        export_onnx.main(args)
        return 0
    if args.job == "digest":
        from pipelines import digest

        return digest.main(args, settings)
    if args.job == "import":
        from pipelines import import_file

        return import_file.main(args, settings)
    engine = make_engine(settings.database_url)
    try:
        if args.job == "requeue":
            from pipelines.requeue import requeue

            statuses = ["failed", "done"] if args.status == "all" else [args.status]
            n = requeue(
                engine, statuses=statuses, source=args.source, received_from=args.received_from
            )
            print(f"requeued {n} tickets ({', '.join(statuses)}); the worker analyses them next")
        if args.job == "cluster":
            from app.clusters.run import execute_run, request_run
            from app.nlp.evidence import load_spacy

            run_id = request_run(
                engine, window_days=args.window_days or settings.cluster_window_days
            )
            run = execute_run(engine, run_id, nlp=load_spacy())
            print(
                f"cluster run {run_id}: {run.status}; {json.dumps(run.counts)}; "
                f"{run.seconds.get('total', 0)} s" + (f"; error: {run.error}" if run.error else "")
            )
            return 0 if run.status == "done" else 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
