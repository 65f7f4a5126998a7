# Report: summary over folds and seeds, thesis tables and figures, and the resolved config.
# It also writes flat views for DVC (metrics.json, plots/*.csv): declared, not in the report.

from audiopetl.report.dvc_views import dvc_view_outputs

# A swept strategy's variant is chosen on validation (audiopetl select; never on test): a
# checkpoint, since with sweep_select_on: first_fold only the winner runs on the other splits.


checkpoint select:
    input:
        metrics=lambda wc: [
            f"{run}/evaluation.json"
            for runs in STUDY.selection_runs(
                wc.dataset, wc.model, wc.strategy
            ).values()
            for run in runs
        ],
    output:
        selection=SELECTION,
    log:
        f"{LOGS}/select/{{dataset}}/{{model}}/{{strategy}}.log",
    conda:
        ENV
    resources:
        **resources_of("report"),
    shell:
        "audiopetl select --quiet --dataset {wildcards.dataset} --model {wildcards.model}"
        " --strategy {wildcards.strategy} --out {output.selection} --log {log}"


rule report:
    input:
        evaluations=lambda wc: [f"{run}/evaluation.json" for run in selected_runs(wc)],
        histories=lambda wc: [f"{run}/history.csv" for run in selected_runs(wc)],
        selections=[str(STUDY.selection_path(*key)) for key in STUDY.selections()],
    output:
        report_entries(),
        resolved=report(
            str(LAYOUT.experiment_dir() / "config.resolved.yaml"),
            caption="../workflow/report/config.rst",
            category="Configuration",
        ),
        dvc_views=[str(p) for p in dvc_view_outputs(CFG, LAYOUT.experiment_dir())],
    log:
        f"{LOGS}/report.log",
    conda:
        ENV
    resources:
        **resources_of("report"),
    params:
        out=lambda wc, output: os.path.dirname(output.resolved),
        report=settings_json(CFG["report"]),
        # What the captions say each figure's statistics are over: the splits (test folds,
        # or a dataset's one official split) and seeds.
        splits=describe_splits(),
        seeds=len(MATRIX["seeds"]),
        runs=max(len(STUDY.split_names(d)) for d in MATRIX["datasets"])
        * len(MATRIX["seeds"]),
    shell:
        "audiopetl report --quiet --out {params.out} --log {log}"
