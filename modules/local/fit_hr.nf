// Fit HR: model fit of the HR detections of one tile (the priors for the LR fit).
process FIT_HR {
    tag "tile ${meta.id}"
    label 'process_medium'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, meta.id) }

    input:
    tuple val(meta), path(tile_files), val(tile_plan), path(inputs, stageAs: 'inputs/in*/*'), val(broken)  // meta [id: tile]; HR cutout + detections; the HR part plan of the tile (JSON); the PSF files it reads; broken: --fail_tiles (testing only)

    output:
    tuple val(meta), path("t${Jointphot.nnnn(meta.id)}_*"), emit: tile   // tNNNN_hr_fit.fits, tNNNN_hr_images.fits
    path 'versions.yml'                                      , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def n = Jointphot.nnnn(meta.id)
    // broken (--fail_tiles, testing only): give this tile a corrupt detection catalogue, so that the
    // real `jointphot fit-hr` fails on it (the staged link is replaced; the original file is untouched).
    // It is an input, not a params lookup, so that only the broken tile's task hash changes.
    def breakIt = broken ? "rm -f t${n}_hr_detections.fits && echo 'corrupted on purpose by --fail_tiles (testing only)' > t${n}_hr_detections.fits" : ''
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    ${breakIt}
    printf '%s\\n' ${Jointphot.shellQuote(tile_plan)} > tile_plan.json
    jointphot fit-hr tile_plan.json --tile ${meta.id} --dir . ${task.ext.args ?: ''}

    jointphot versions "${task.process}" > versions.yml
    """

    stub:
    def n = Jointphot.nnnn(meta.id)
    """
    ${broken ? "echo 'jointphot: error: tile ${meta.id} broken on purpose by --fail_tiles (stub)' >&2; exit 1" : ''}
    touch t${n}_hr_fit.fits t${n}_hr_images.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
