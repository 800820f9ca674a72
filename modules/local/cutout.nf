// Cutout: the HR cutout and one cutout per LR band of one tile (padded region) from the large images.
process CUTOUT {
    tag "tile ${meta.id}"
    label 'process_low'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, meta.id) }

    input:
    val meta                                        // [id: tile id]
    path plan
    path inputs, stageAs: 'inputs/in*/*'            // the large images are read here (absolute paths in plan.json)

    output:
    tuple val(meta), path("t${Jointphot.nnnn(meta.id)}_*"), emit: tile   // tNNNN_hr_cutout.fits, tNNNN_<band>_cutout.fits
    path 'versions.yml'                                      , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    jointphot cutout ${plan} --tile ${meta.id} --dir . ${task.ext.args ?: ''}

    jointphot versions "${task.process}" > versions.yml
    """

    stub:
    def n = Jointphot.nnnn(meta.id)
    """
    touch t${n}_hr_cutout.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
