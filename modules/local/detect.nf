// Detect: SExtractor on the HR cutout of one tile.
process DETECT {
    tag "tile ${meta.id}"
    label 'process_low'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, meta.id) }

    input:
    tuple val(meta), path(tile_files), val(tile_plan), path(inputs, stageAs: 'inputs/in*/*')  // meta [id: tile]; the HR cutout; the HR part plan of the tile (JSON); the files it reads (sexinputdir)

    output:
    tuple val(meta), path("t${Jointphot.nnnn(meta.id)}_*"), emit: tile   // tNNNN_hr_detections.fits
    path 'versions.yml'                                      , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    printf '%s\\n' ${Jointphot.shellQuote(tile_plan)} > tile_plan.json
    jointphot detect tile_plan.json --tile ${meta.id} --dir . ${task.ext.args ?: ''}

    jointphot versions "${task.process}" --tool source-extractor > versions.yml
    """

    stub:
    def n = Jointphot.nnnn(meta.id)
    """
    touch t${n}_hr_detections.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
