# Evaluation: every run is rebuilt from its saved files and scored again; a run whose
# weights do not reproduce its reported numbers fails here.


rule evaluate:
    input:
        metrics=f"{RUN}/metrics.json",
        predictions=f"{RUN}/predictions.parquet",
    output:
        evaluation=f"{RUN}/evaluation.json",
    log:
        f"{LOGS}/evaluate/{RUN_LOG}",
    conda:
        ENV
    threads: CFG["training"]["threads"]
    resources:
        **resources_of("data"),
    params:
        run=lambda wc, input: os.path.dirname(input.metrics),
    shell:
        "HF_HUB_OFFLINE=1 audiopetl evaluate {params.run} --quiet"
        " --out {output.evaluation} > {log} 2>&1"
