# Data: a verified dataset under data/raw, then its log-mel cache, computed once.


rule fetch:
    # Local: downloads need the internet, which compute nodes often lack.
    output:
        manifest=f"{DATA}/raw/{{dataset}}/manifest.csv",
    log:
        f"{LOGS}/fetch/{{dataset}}.log",
    localrule: True
    conda:
        ENV
    resources:
        **resources_of("data"),
    params:
        cli=CLI_CONFIG,
        settings=lambda wc: settings_json(apconfig.dataset_config(CFG, wc.dataset)),
    shell:
        "audiopetl fetch {wildcards.dataset} {params.cli} --force > {log} 2>&1"


rule cache:
    input:
        manifest=f"{DATA}/raw/{{dataset}}/manifest.csv",
    output:
        cache=f"{DATA}/features/{{dataset}}-{{fid}}.parquet",
    log:
        f"{LOGS}/cache/{{dataset}}-{{fid}}.log",
    conda:
        ENV
    threads: CFG["cache"]["workers"]
    resources:
        **resources_of("data"),
    params:
        cli=CLI_CONFIG,
        features=lambda wc: settings_json(apconfig.feature_settings(CFG, wc.dataset)),
    shell:
        "audiopetl cache {wildcards.dataset} {params.cli} --out {output.cache} --force"
        " > {log} 2>&1"


rule data_report:
    input:
        manifest=f"{DATA}/raw/{{dataset}}/manifest.csv",
        cache=lambda wc: cache_file(wc.dataset),
    output:
        report=f"{DATA}/reports/{{dataset}}.json",
    log:
        f"{LOGS}/data_report/{{dataset}}.log",
    conda:
        ENV
    resources:
        **resources_of("data"),
    params:
        cli=CLI_CONFIG,
    shell:
        "audiopetl data-report {wildcards.dataset} {params.cli} --out {output.report}"
        " > {log} 2>&1"


rule fetch_model:
    # Local: compute nodes often have no internet; training jobs read the mirror.
    output:
        config=f"{DATA}/models/{{model}}/config.json",
    log:
        f"{LOGS}/fetch_model/{{model}}.log",
    localrule: True
    conda:
        ENV
    resources:
        **resources_of("data"),
    params:
        cli=CLI_CONFIG,
        source=lambda wc: apconfig.model_config(CFG, wc.model)["pretrained"],
    shell:
        "audiopetl fetch-model --model {wildcards.model} {params.cli} > {log} 2>&1"
