// Detect: SExtractor on the HR cutout of one tile.
process DETECT {
    tag "tile ${meta.id}"
    label 'process_low'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, meta.id) }

    input:
    tuple val(meta), path(tile_files)               // meta [id: tile id]; the tile's cutouts
    path plan
    path inputs, stageAs: 'inputs/in*/*'            // sexinputdir (if any) must be visible

    output:
    tuple val(meta), path("t${Jointphot.nnnn(meta.id)}_*"), emit: tile   // tNNNN_hr_detections.fits
    path 'versions.yml'                                      , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    jointphot detect ${plan} --tile ${meta.id} --dir . ${task.ext.args ?: ''}

    jointphot versions "${task.process}" --tool source-extractor > versions.yml
    """

    stub:
    def n = Jointphot.nnnn(meta.id)
    """
    touch t${n}_hr_detections.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
