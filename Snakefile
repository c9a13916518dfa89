# The workflow lives in workflow/Snakefile (the Snakemake workflow catalog's layout, which modules and snakedeploy
# read); this file lets `snakemake` run it from the top of a clone. An included file's default target does not
# carry over, so this one names it.


include: "workflow/Snakefile"


rule reproduce:
    """Everything workflow/Snakefile's rule all asks for."""
    default_target: True
    input:
        rules.all.input,
