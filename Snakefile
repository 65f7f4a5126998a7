# audiopetl: verified download -> log-mel cache -> one training job per
# dataset x model x strategy x fold x seed -> evaluation -> thesis figures and tables.
#
#   snakemake -c all                                   # the embedded default
#   snakemake -c all --config experiment=quick         # a preset from config/experiments/
#   snakemake -c all --config config_file=my.yaml      # another base configuration


from snakemake.utils import min_version

min_version("9.0")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        report_outputs(),
        data_reports(),
