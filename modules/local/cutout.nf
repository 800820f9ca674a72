// Cutout: one part of one tile (padded region) from the large images: the HR cutout, or one LR band's.
process CUTOUT {
    tag "tile ${meta.id}${meta.band ? ' ' + meta.band : ''}"
    label 'process_low'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, meta.id, meta.band) }

    input:
    tuple val(meta), val(tile_plan), path(inputs, stageAs: 'inputs/in*/*')  // meta [id: tile] (HR) or [id, band]; the part plan of the tile (JSON); the large images it reads

    output:
    tuple val(meta), path("t${Jointphot.nnnn(meta.id)}_*"), emit: tile   // tNNNN_hr_cutout.fits or tNNNN_<band>_cutout.fits
    path 'versions.yml'                                      , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def band = meta.band ? "--band ${meta.band}" : ''
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    printf '%s\\n' ${Jointphot.shellQuote(tile_plan)} > tile_plan.json
    jointphot cutout tile_plan.json --tile ${meta.id} ${band} --dir . ${task.ext.args ?: ''}

    jointphot versions "${task.process}" > versions.yml
    """

    stub:
    def n = Jointphot.nnnn(meta.id)
    """
    touch t${n}_${meta.band ?: 'hr'}_cutout.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
