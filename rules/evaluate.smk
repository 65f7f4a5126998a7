# Evaluation: every run is rebuilt from its saved files and scored again; a run whose
# weights do not reproduce its reported numbers fails here.


rule evaluate:
    input:
        metrics=f"{RESULTS}/{EXPERIMENT}/{{dataset}}/{{model}}/{{strategy}}/seed{{seed}}/fold{{fold}}/metrics.json",
        predictions=f"{RESULTS}/{EXPERIMENT}/{{dataset}}/{{model}}/{{strategy}}/seed{{seed}}/fold{{fold}}/predictions.parquet",
    output:
        evaluation=f"{RESULTS}/{EXPERIMENT}/{{dataset}}/{{model}}/{{strategy}}/seed{{seed}}/fold{{fold}}/evaluation.json",
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{model}}/{{strategy}}/seed{{seed}}/fold{{fold}}.log",
    conda:
        ENV
    threads: CFG["training"]["threads"]
    resources:
        **resources_of("data"),
    params:
        cli=CLI_CONFIG,
        run=lambda wc, input: os.path.dirname(input.metrics),
    shell:
        "HF_HUB_OFFLINE=1 audiopetl evaluate {params.run} {params.cli}"
        " --out {output.evaluation} > {log} 2>&1"
