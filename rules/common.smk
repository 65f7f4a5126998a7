# Configuration and paths shared by every rule. The configuration is resolved and validated
# by the same function the CLI uses, and every path comes from audiopetl.core.paths, so a rule
# and a person at the shell see the same settings and the same files.

import json
import os
import sys

from snakemake.io import report as mark_for_report

from audiopetl.core import config as apconfig
from audiopetl.core import paths as appaths
from audiopetl.core.errors import ConfigError, DataError
from audiopetl.core.settings import thaw
from audiopetl.features import cachefile as apcachefile
from audiopetl.models import hub as aphub
from audiopetl.process import warm as apwarm
from audiopetl.report.build import expected_outputs
from audiopetl.study import load_study
from audiopetl.study import embeddings as apembeddings
from audiopetl.study import resources as apresources

ALLOWED_CONFIG_KEYS = {"experiment", "config_file"}
# Data jobs run before training jobs whenever both could (rules/data.smk).
DATA_PRIORITY = 10
_extra = set(config) - ALLOWED_CONFIG_KEYS
if _extra:
    raise ValueError(
        f"--config accepts only {sorted(ALLOWED_CONFIG_KEYS)}; got {sorted(_extra)}. "
        "Put other settings in a preset under config/experiments/ so the CLI sees them too."
    )
CONFIG_FILE = config.get("config_file", "config/config.yaml")
# Validated and resolved by the same function the CLI uses (audiopetl.study.load_study: the
# schema with every kind's settings composed in, and the kind-aware checks). The rules ask it
# for settings (their params) and paths; none reads the configuration itself.
# A configuration error is one message, not a traceback through this file.
try:
    STUDY = load_study(CONFIG_FILE, config.get("experiment"))
except (ConfigError, DataError) as _error:
    print(f"error: {_error}", file=sys.stderr)
    sys.exit(1)
CFG = STUDY.config
LAYOUT = STUDY.layout
EXPERIMENT = STUDY.name
MATRIX = CFG["study"]
# Every job's `audiopetl` command reads the configuration the workflow resolved from these two
# variables (the CLI's --config and --experiment default to them; its log names them). They
# stay off the command lines on purpose: Snakemake reruns a job whose command or params
# changed, and a data job must not rerun because another preset asks for the same data.
os.environ[apconfig.CONFIG_ENV] = CONFIG_FILE
os.environ[apconfig.EXPERIMENT_ENV] = EXPERIMENT
# Local jobs run in a fork of a process that imported torch, transformers and peft once
# (audiopetl.process.warm): on a small study those imports were most of the jobs' time. Never inside a
# SLURM job; AUDIOPETL_WARM=0 in the environment switches it off.
os.environ.setdefault(apwarm.ENV, "1")


envvars:
    apconfig.CONFIG_ENV,
    apconfig.EXPERIMENT_ENV,


# Path patterns, from the functions that give the CLI its paths.
MANIFEST = str(LAYOUT.manifest("{dataset}", "{did}"))
CACHE = str(LAYOUT.cache("{dataset}", "{fid}"))
DATA_REPORT = str(LAYOUT.data_report("{dataset}", "{fid}"))
MIRROR = str(LAYOUT.mirror("{model}"))
PRETRAIN = str(LAYOUT.pretrain_dir("{model}"))
SPLIT_SIZES = str(LAYOUT.split_sizes("{dataset}"))
RUN = str(LAYOUT.run_dir("{dataset}", "{model}", "{strategy}", "{split}", "{seed}"))
RUN_LOG = str(
    appaths.run_log("{dataset}", "{model}", "{strategy}", "{split}", "{seed}")
)
EMBEDDINGS = str(LAYOUT.embeddings("{dataset}", "{model}", "{eid}"))
SELECTION = str(LAYOUT.sweep_selection("{dataset}", "{model}", "{strategy}"))
LOGS = str(LAYOUT.logs())
# dvc.yaml names these folders as outputs, and a study may leave some of them empty (no hub
# checkpoint, no pretraining): DVC refuses an output that does not exist. Made here, not in an
# onsuccess handler, which Snakemake skips when it has nothing to do.
for _folder in LAYOUT.versioned_dirs():
    os.makedirs(_folder, exist_ok=True)
# A damaged feature cache (failed page checksums, NaN features, unreadable) would fail every
# job that reads it. The main Snakemake process checks the study's caches and moves a damaged
# one aside (.NAME.damaged, kept for a look), so the cache rule, finding its output missing,
# rebuilds it and the runs that read it train again. Reading a cache costs about 0.5 s per
# 150 MB (ESC-50's).
if workflow.is_main_process:
    for _cache in STUDY.caches():
        _moved = apcachefile.set_aside_if_damaged(_cache)
        if _moved is not None:
            print(
                f"audiopetl: {_moved[1]}; moved aside to {_moved[0]}", file=sys.stderr
            )
# The conda environment of every rule, chosen in the config (used with --sdm conda).
ENV = f"../envs/{CFG['env']}.yaml"


wildcard_constraints:
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    strategy=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    did=r"[0-9a-f]{10}",
    fid=r"[0-9a-f]{10}",
    eid=r"[0-9a-f]{10}",
    split=r"fold\d+|official",
    seed=r"\d+",


def settings_json(value):
    """Params as canonical JSON: a change reruns exactly the jobs whose settings changed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def manifest_file(dataset):
    return str(STUDY.manifest_path(dataset))


def split_sizes_file(dataset):
    return str(LAYOUT.split_sizes(dataset))


def cache_file(dataset, model=None):
    """The cache of the front end ``model`` reads (AST's fbank when None)."""
    return str(STUDY.cache_path(dataset, model))


def pretrain_inputs(model):
    """What a run starts from when the workflow provides it: its own pretraining, or the local
    mirror of a hub checkpoint (fetched on the submitting machine)."""
    settings = STUDY.model(model)
    if settings.pretrain is not None:
        return [str(LAYOUT.pretrain_dir(model) / "metrics.json")]
    if settings.pretrained and aphub.is_hub_id(settings.pretrained):
        return [str(LAYOUT.mirror(model) / aphub.MIRROR_RECORD)]
    return []


def embedding_inputs(dataset, model, strategy):
    """A probe's embedding cache (none for the other strategies)."""
    if apembeddings.trains_on_embeddings(STUDY.strategy(strategy)):
        return [str(apembeddings.path(STUDY, dataset, model))]
    return []


def selected_runs(wildcards):
    """Every run the report reads: a sweep selected on its first split adds its winner's
    runs on the other splits once the selection is made."""
    winners = {}
    for key in STUDY.selections():
        if STUDY.select_on(key[2]) == "first_fold":
            done = checkpoints.select.get(dataset=key[0], model=key[1], strategy=key[2])
            with open(done.output.selection) as handle:
                winners[key] = json.load(handle)["selected"]
    return [str(run) for run in STUDY.runs(winners)]


def report_outputs():
    return [str(p) for p in expected_outputs(CFG, LAYOUT.experiment_dir())]


def report_entries():
    """The report's files, each with its caption from workflow/report/ and a category."""
    entries = []
    for path in report_outputs():
        stem = os.path.basename(path).split(".")[0].split("-")[0]
        folder = os.path.basename(os.path.dirname(path))
        category = "Figures" if folder == "figures" else "Tables"
        caption = f"../workflow/report/{stem}.rst"
        entries.append(mark_for_report(path, caption=caption, category=category))
    return entries


def describe_splits():
    """The study's splits in words, for the report's captions: "5 folds", "1 official split"."""
    counts = {
        len(STUDY.split_names(d)): STUDY.dataset(d).scheme for d in MATRIX["datasets"]
    }
    words = []
    for n, scheme in sorted(counts.items()):
        noun = "official split" if scheme == "official" else "fold"
        words.append(f"{n} {noun}{'s' if n != 1 else ''}")
    return " or ".join(words)


def data_reports():
    return [str(STUDY.data_report_path(d)) for d in MATRIX["datasets"]]


def resources_of(kind):
    """What a job of `kind` asks a scheduler for: config `resources`, a training job's model
    overriding it under `resources.models`, in the names the SLURM executor plugin reads
    (None: not asked for). `audiopetl plan` shows the same."""

    def resource(name):
        def value(wildcards, threads, attempt):
            settings = apresources.job_resources(
                CFG["resources"], kind, wildcards.get("model")
            )
            return apresources.snakemake_resources(settings, threads, attempt)[name]

        return value

    return {name: resource(name) for name in apresources.RESOURCE_NAMES}
