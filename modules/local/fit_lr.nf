// Fit LR: forced photometry of one tile in one LR band with the HR models as priors.
process FIT_LR {
    tag "tile ${meta.id} ${meta.band}"
    label 'process_medium'
    errorStrategy { Jointphot.tileErrorStrategy(task, params.max_retries as int, meta.id, meta.band) }

    input:
    tuple val(meta), path(tile_files), val(tile_plan), path(inputs, stageAs: 'inputs/in*/*'), val(broken)  // meta [id: tile, band: LR band]; HR cutout, detections and fit + the band's cutout; the band's part plan of the tile (JSON); the band's PSF and offset files; broken: --fail_bands (testing only)

    output:
    tuple val(meta), path("t${Jointphot.nnnn(meta.id)}_${meta.band}_*"), emit: tile   // tNNNN_<band>_fit.fits (the tile's catalogue with the band's columns), tNNNN_<band>_images.fits
    path 'versions.yml'                                                         , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def n = Jointphot.nnnn(meta.id)
    // broken (--fail_bands, testing only): a corrupt cutout of this band, so the real `jointphot fit-lr` fails
    def breakIt = broken ? "rm -f t${n}_${meta.band}_cutout.fits && echo 'corrupted on purpose by --fail_bands (testing only)' > t${n}_${meta.band}_cutout.fits" : ''
    """
    export OMP_NUM_THREADS=${task.cpus} OPENBLAS_NUM_THREADS=${task.cpus} MKL_NUM_THREADS=${task.cpus}
    ${breakIt}
    printf '%s\\n' ${Jointphot.shellQuote(tile_plan)} > tile_plan.json
    jointphot fit-lr tile_plan.json --tile ${meta.id} --band ${meta.band} --dir . ${task.ext.args ?: ''}

    jointphot versions "${task.process}" > versions.yml
    """

    stub:
    def n = Jointphot.nnnn(meta.id)
    """
    ${broken ? "echo 'jointphot: error: tile ${meta.id} band ${meta.band} broken on purpose by --fail_bands (stub)' >&2; exit 1" : ''}
    touch t${n}_${meta.band}_fit.fits t${n}_${meta.band}_images.fits
    printf '"%s":\\n    jointphot: stub\\n' '${task.process}' > versions.yml
    """
}
