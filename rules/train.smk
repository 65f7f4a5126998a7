# Training: the source-task pretraining of the default, the embeddings a probe trains on (once
# per dataset and model), then one job per
# dataset x model x strategy x split (a test fold, or an official split) x seed, which also rebuilds its run from the files it wrote
# and scores it again (evaluation.json): a run whose weights do not reproduce its reported
# numbers fails. A job resumes from its resume folder (beside the run folder, so Snakemake's
# cleanup of incomplete outputs does not remove it). Each command appends to its log, every
# attempt headed by its number and SLURM job, and says why it failed on its stderr, which
# Snakemake and SLURM show.
#
# On SLURM a training job asks for SIGTERM before its time limit (resources.train.
# signal_before_s); `exec` makes audiopetl itself the process that gets it (a shell in between
# would die at once), so it saves, exits 75 and the profile's retries resume it. Training jobs
# run offline (HF_HUB_OFFLINE=1): compute nodes often have no internet, so a checkpoint that is
# not mirrored yet fails at once with what to run instead of hanging on a download.


rule pretrain:
    input:
        cache=lambda wc: cache_file(STUDY.model(wc.model).pretrain.dataset, wc.model),
    output:
        metrics=f"{PRETRAIN}/metrics.json",
    log:
        f"{LOGS}/pretrain/{{model}}.log",
    conda:
        ENV
    threads: CFG["training"]["threads"]
    resources:
        **resources_of("train"),
    params:
        out=lambda wc, output: os.path.dirname(output.metrics),
        # What the pretraining computes with: a change elsewhere in `training` (the split,
        # model selection, the guards) reruns the runs, not the pretraining.
        settings=lambda wc: settings_json(STUDY.pretrain_params(wc.model)),
    shell:
        "HF_HUB_OFFLINE=1 exec audiopetl pretrain --model {wildcards.model} --quiet"
        " --out {params.out} --log {log}"


rule embed:
    input:
        cache=lambda wc: cache_file(wc.dataset, wc.model),
        pretrained=lambda wc: pretrain_inputs(wc.model),
    output:
        embeddings=EMBEDDINGS,
    log:
        f"{LOGS}/embed/{{dataset}}/{{model}}-{{eid}}.log",
    conda:
        ENV
    threads: CFG["training"]["threads"]
    resources:
        **resources_of("train"),
    params:
        settings=lambda wc: settings_json(
            apembeddings.identity(STUDY, wc.dataset, wc.model)
        ),
    shell:
        "HF_HUB_OFFLINE=1 exec audiopetl embed --dataset {wildcards.dataset}"
        " --model {wildcards.model} --quiet --log {log}"


rule train:
    input:
        cache=lambda wc: cache_file(wc.dataset, wc.model),
        pretrained=lambda wc: pretrain_inputs(wc.model),
        embeddings=lambda wc: embedding_inputs(wc.dataset, wc.model, wc.strategy),
        splits=lambda wc: ancient(split_sizes_file(wc.dataset)),
    output:
        metrics=f"{RUN}/metrics.json",
        predictions=f"{RUN}/predictions.parquet",
        history=f"{RUN}/history.csv",
        run=f"{RUN}/run.json",
        sums=f"{RUN}/SHA256SUMS",
        evaluation=f"{RUN}/evaluation.json",
    log:
        f"{LOGS}/train/{RUN_LOG}",
    conda:
        ENV
    threads: CFG["training"]["threads"]
    resources:
        **resources_of("train"),
    params:
        out=lambda wc, output: os.path.dirname(output.metrics),
        # Only the settings this run depends on (RunSettings.params): changing one strategy
        # reruns only its jobs.
        settings=lambda wc: settings_json(STUDY.run_params(wc.model, wc.strategy)),
    shell:
        "HF_HUB_OFFLINE=1 exec audiopetl train --quiet --dataset {wildcards.dataset}"
        " --model {wildcards.model}"
        " --strategy {wildcards.strategy} --split {wildcards.split} --seed {wildcards.seed}"
        " --out {params.out} --evaluate --log {log}"
