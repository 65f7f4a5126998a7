# Configuration and paths shared by every rule. The configuration is resolved and validated
# by the same function the CLI uses, so a rule and a person at the shell see the same settings.

import json
import os

from snakemake.io import report as mark_for_report
from snakemake.utils import validate

from audiopetl import config as apconfig
from audiopetl import hub as aphub
from audiopetl import paths as appaths
from audiopetl import plan as applan
from audiopetl.report.build import expected_outputs

ALLOWED_CONFIG_KEYS = {"experiment", "config_file"}
_extra = set(config) - ALLOWED_CONFIG_KEYS
if _extra:
    raise ValueError(
        f"--config accepts only {sorted(ALLOWED_CONFIG_KEYS)}; got {sorted(_extra)}. "
        "Put other settings in a preset under config/experiments/ so the CLI sees them too."
    )
CONFIG_FILE = config.get("config_file", "config/config.yaml")
CFG = apconfig.load_config(CONFIG_FILE, config.get("experiment"))
validate(CFG, str(apconfig.schema_path()))
EXPERIMENT = CFG["experiment"]
DATA = CFG["paths"]["data"]
RESULTS = CFG["paths"]["results"]
STUDY = CFG["study"]
LOGS = f"{RESULTS}/{EXPERIMENT}/logs"
# One folder per run, and per source-task pretraining, under the two fixed folders that
# dvc.yaml names as the training stage's outputs (audiopetl.paths).
RUNS = f"{RESULTS}/{EXPERIMENT}/{appaths.RUNS}"
PRETRAIN = f"{RESULTS}/{EXPERIMENT}/{appaths.PRETRAIN}"
RUN = f"{RUNS}/{{dataset}}/{{model}}/{{strategy}}/seed{{seed}}/fold{{fold}}"
RUN_LOG = "{dataset}/{model}/{strategy}/seed{seed}/fold{fold}.log"
# dvc.yaml names these folders as outputs, and a study may leave some of them empty (no hub
# checkpoint, no pretraining): DVC refuses an output that does not exist. Made here, not in an
# onsuccess handler, which Snakemake skips when it has nothing to do.
for _folder in appaths.versioned_dirs(CFG):
    os.makedirs(_folder, exist_ok=True)
# Every CLI call names the same configuration the workflow resolved.
CLI_CONFIG = f"--config {CONFIG_FILE} --experiment {EXPERIMENT} --quiet"
# The conda environment of every rule, chosen in the config (used with --sdm conda).
ENV = f"../envs/{CFG['env']}.yaml"


wildcard_constraints:
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    strategy=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    fid=r"[0-9a-f]{10}",
    fold=r"\d+",
    seed=r"\d+",


def settings_json(value):
    """Params as canonical JSON: a change reruns exactly the jobs whose settings changed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def cache_file(dataset):
    return f"{DATA}/features/{dataset}-{apconfig.feature_id(CFG, dataset)}.parquet"


def pretrain_inputs(model):
    """What a run starts from when the workflow provides it: its own pretraining, or the local
    mirror of a hub checkpoint (fetched on the submitting machine)."""
    model_cfg = apconfig.model_config(CFG, model)
    if model_cfg.get("pretrain"):
        return [f"{PRETRAIN}/{model}/metrics.json"]
    if model_cfg.get("pretrained") and aphub.is_hub_id(model_cfg["pretrained"]):
        return [f"{DATA}/models/{model}/config.json"]
    return []


def run_dir(dataset, model, strategy, seed, fold):
    return RUN.format(
        dataset=dataset, model=model, strategy=strategy, seed=seed, fold=fold
    )


def all_runs():
    return [
        run_dir(d, m, s, seed, f)
        for d in STUDY["datasets"]
        for m in STUDY["models"]
        for s in STUDY["strategies"]
        for seed in STUDY["seeds"]
        for f in STUDY["folds"]
    ]


def report_outputs():
    return [str(p) for p in expected_outputs(CFG, f"{RESULTS}/{EXPERIMENT}")]


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


def data_reports():
    return [f"{DATA}/reports/{d}.json" for d in STUDY["datasets"]]


def resources_of(kind):
    """What a job of `kind` asks a scheduler for: config `resources`, a training job's model
    overriding it under `resources.models`, in the names the SLURM executor plugin reads
    (None: not asked for). `audiopetl plan` shows the same."""

    def resource(name):
        def value(wildcards, threads, attempt):
            settings = applan.job_resources(CFG, kind, wildcards.get("model"))
            return applan.snakemake_resources(settings, threads, attempt)[name]

        return value

    return {name: resource(name) for name in applan.RESOURCE_NAMES}
