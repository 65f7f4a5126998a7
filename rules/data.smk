# Data: a verified dataset under data/raw, then one feature cache per front end its models read
# (AST's fbank, Whisper's log-mel, the waveform), each computed once. Each folder and file name
# carries a hash of the settings it is made from (audiopetl.core.paths), so presets and models that
# share a dataset and a front end share its files, and those that differ keep their own.
#
# Data jobs go first (priority DATA_PRIORITY, above training's 0): bad data stops a study in its
# first minute, not after a source-task pretraining. The `splits` job checks that every run's
# sets can be learnt and judged on (data.min_split_clips); the training jobs of a dataset wait
# for it (ancient: its rewriting never reruns them).


rule fetch:
    # Local: downloads need the internet, which compute nodes often lack.
    output:
        manifest=MANIFEST,
    log:
        f"{LOGS}/fetch/{{dataset}}-{{did}}.log",
    priority: DATA_PRIORITY
    localrule: True
    conda:
        ENV
    resources:
        **resources_of("data"),
    params:
        settings=lambda wc: settings_json(thaw(STUDY.dataset(wc.dataset).identity)),
    shell:
        "audiopetl fetch {wildcards.dataset} --quiet --force --log {log}"


rule cache:
    input:
        manifest=lambda wc: manifest_file(wc.dataset),
    output:
        cache=CACHE,
    log:
        f"{LOGS}/cache/{{dataset}}-{{fid}}.log",
    priority: DATA_PRIORITY
    conda:
        ENV
    threads: CFG["cache"]["workers"]
    resources:
        **resources_of("data"),
    params:
        features=lambda wc: settings_json(
            STUDY.features(
                wc.dataset, STUDY.model_for_feature_id(wc.dataset, wc.fid)
            ).record()
        ),
    shell:
        "audiopetl cache {wildcards.dataset} --features-id {wildcards.fid} --quiet"
        " --out {output.cache} --force --log {log}"


rule data_report:
    input:
        manifest=lambda wc: manifest_file(wc.dataset),
        cache=lambda wc: cache_file(wc.dataset),
    output:
        report=DATA_REPORT,
    log:
        f"{LOGS}/data_report/{{dataset}}-{{fid}}.log",
    priority: DATA_PRIORITY
    conda:
        ENV
    resources:
        **resources_of("data"),
    shell:
        "audiopetl data-report {wildcards.dataset} --quiet --out {output.report} --log {log}"


rule splits:
    input:
        manifest=lambda wc: manifest_file(wc.dataset),
    output:
        sizes=SPLIT_SIZES,
    log:
        f"{LOGS}/splits/{{dataset}}.log",
    priority: DATA_PRIORITY
    localrule: True
    conda:
        ENV
    resources:
        **resources_of("data"),
    params:
        settings=lambda wc: settings_json(STUDY.split_check_params(wc.dataset)),
    shell:
        "audiopetl splits {wildcards.dataset} --quiet --out {output.sizes} --log {log}"


rule fetch_model:
    # Local: compute nodes often have no internet; training jobs read the mirror.
    output:
        record=f"{MIRROR}/{aphub.MIRROR_RECORD}",
    log:
        f"{LOGS}/fetch_model/{{model}}.log",
    priority: DATA_PRIORITY
    localrule: True
    conda:
        ENV
    resources:
        **resources_of("data"),
    params:
        source=lambda wc: settings_json(aphub.source_of(STUDY.model(wc.model))),
    shell:
        "audiopetl fetch-model --model {wildcards.model} --quiet --force --log {log}"
