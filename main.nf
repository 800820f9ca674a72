#!/usr/bin/env nextflow
/*
 * jointphot: joint prior-based photometry of a high-resolution (HST-like) and a low-resolution
 * (HSC-like) image, tile by tile.
 *
 *   plan (one task) -> cutout (one task per tile and part: HR, each LR band) -> detect -> fit HR (one task
 *   per tile) -> fit LR (one task per tile and LR band) -> merge -> qa (one task each)
 *
 * Every task runs one `jointphot <subcommand>` (see docs/design.md). Parameters are the keys of the
 * original tool's job file plus a few pipeline options; nextflow_schema.json documents and
 * validates them (`nextflow run main.nf --help`).
 */
nextflow.enable.dsl = 2

include { PLAN   } from './modules/local/plan'
include { CUTOUT } from './modules/local/cutout'
include { DETECT } from './modules/local/detect'
include { FIT_HR } from './modules/local/fit_hr'
include { FIT_LR } from './modules/local/fit_lr'
include { MERGE  } from './modules/local/merge'
include { QA     } from './modules/local/qa'

// ---------------------------------------------------------------- help, version, validation
// (all before any task starts: a wrong parameter stops the run here, with a message naming it)

def schema = Jointphot.loadSchema(file("${projectDir}/nextflow_schema.json"))

if (params.help || params.help_all) {
    log.info Jointphot.help(schema, "nextflow run main.nf -params-file job.json --outdir results [-profile standard|test|docker|podman|shifter|slurm|nersc|debug]", params.help_all as boolean)
    exit 0
}
if (params.version) {
    log.info "jointphot pipeline ${workflow.manifest.version} (Nextflow ${nextflow.version})"
    exit 0
}

// a relative path of a job key: looked up in the launch dir, then next to the -params-file (as `jointphot` does)
def jobBase = Jointphot.jobBaseDirs(workflow.commandLine, workflow.launchDir, System.getenv())
def checked = Jointphot.validate(params, schema, jobBase)
if (params.validate_params && checked.errors) {
    error("Invalid parameters (${checked.errors.size()}):\n  * " + checked.errors.join('\n  * ') +
          "\nSee `nextflow run main.nf --help` for the parameters, or `--validate_params false` to skip these checks.")
}
def P = checked.params

// ---------------------------------------------------------------- the job

def job = Jointphot.job(P, schema, jobBase)
def inputFiles = Jointphot.inputFiles(job, schema)

// ---------------------------------------------------------------- workflow

workflow JOINTPHOT {
    take:
    job_json        // value: the job keys as one line of JSON, its files named where PLAN stages them
    inputs          // value: list of the job's input files and directories
    job_file        // value: the job file with the paths as given (recorded in the plan and the catalogue)

    main:
    ch_versions = Channel.empty()

    PLAN(job_json, P.tiles, inputs, job_file)
    ch_plan = PLAN.out.plan                         // a value channel (all PLAN inputs are values): MERGE and QA read plan.json
    ch_versions = ch_versions.mix(PLAN.out.versions)

    // fan out: one meta map [id: tile id] per tile that --tiles selects
    ch_tiles = PLAN.out.tiles.flatMap { tiles ->
        def ids = Jointphot.selectedTiles(tiles)
        Jointphot.plannedTiles.addAll(ids)
        log.info "jointphot: ${ids.size()} tile(s) to run: ${ids.join(', ')}"
        return ids.collect { [id: it] }
    }

    // one unit of work per (tile, part): the HR image, then each LR band. Each carries its part plan of the
    // tile as a value and only the files its steps read, so that adding a band re-runs that band's tasks only
    ch_bands = PLAN.out.plan.map { plan -> [Jointphot.bandNames(plan)] }
    ch_units = ch_tiles.combine(PLAN.out.parts).combine(ch_bands)
        .flatMap { meta, parts, bands -> Jointphot.tileParts(parts, bands, meta.id) }
    ch_hr_unit = ch_units.filter { meta, cut_plan, cut, plan, steps -> !meta.band }.map { meta, cut_plan, cut, plan, steps -> [meta, plan, steps] }
    ch_band_unit = ch_units.filter { meta, cut_plan, cut, plan, steps -> meta.band }.map { meta, cut_plan, cut, plan, steps -> [meta, plan, steps] }

    CUTOUT(ch_units.map { meta, cut_plan, cut, plan, steps -> [meta, cut_plan, cut] })
    ch_hr_cutout = CUTOUT.out.tile.filter { meta, files -> !meta.band }
    DETECT(ch_hr_cutout.join(ch_hr_unit))

    // a tile's HR files accumulate from step to step (join on meta drops the tiles that failed)
    ch_fit_hr_in = ch_hr_cutout.join(DETECT.out.tile).map { meta, a, b -> [meta, [a, b].flatten()] }
    def failTiles = (P.fail_tiles ?: '').toString().tokenize(',')*.trim()      // testing only: 'TILE,TILE'
    FIT_HR(ch_fit_hr_in.join(ch_hr_unit).map { meta, files, plan, steps -> [meta, files, plan, steps, failTiles.contains(meta.id as String)] })
    ch_tile_files = ch_fit_hr_in.join(FIT_HR.out.tile).map { meta, a, b -> [meta, [a, b].flatten()] }

    // one FIT_LR per (tile, LR band), with the tile's HR products and the band's cutout
    def failBands = (P.fail_bands ?: '').toString().tokenize(',')*.trim()      // testing only: 'TILE:BAND'
    ch_band_cutout = CUTOUT.out.tile.filter { meta, files -> meta.band }
    ch_fit_lr_in = ch_band_cutout
        .map { meta, files -> [[id: meta.id], meta, files] }
        .combine(ch_tile_files, by: 0)
        .map { tile, meta, band_files, hr_files -> [meta, [hr_files, band_files].flatten()] }
        .join(ch_band_unit)
        .map { meta, files, plan, steps -> [meta, files, plan, steps, failBands.contains("${meta.id}:${meta.band}" as String)] }
    FIT_LR(ch_fit_lr_in)

    ch_versions = ch_versions.mix(CUTOUT.out.versions, DETECT.out.versions, FIT_HR.out.versions, FIT_LR.out.versions)

    // merge waits for every band of every tile; the tiles of which no band got through are passed as
    // --missing-tiles (a tile missing some bands is merged with those bands' columns NaN)
    ch_merge = ch_tiles.toList().map { [planned: it] }
        .combine(FIT_LR.out.tile.toList().map { [done: it] })
        .filter { planned, done -> done.done }      // nothing to merge when every tile failed
        .multiMap { planned, done ->
            def doneIds = done.done.collect { meta, files -> meta.id }.unique()
            Jointphot.mergedTiles.addAll(doneIds)
            lr_fits: done.done.sort { a, b -> a[0].id <=> b[0].id ?: a[0].band <=> b[0].band }.collect { it[1] }.flatten()
                         .findAll { it.name ==~ /t\d{4}_[A-Za-z][A-Za-z0-9]*_fit\.fits/ }
            missing: (planned.planned.collect { it.id } - doneIds).sort().join(',')
        }
    MERGE(ch_merge.lr_fits, ch_plan, ch_merge.missing)
    ch_versions = ch_versions.mix(MERGE.out.versions)

    // QA pictures from the finished tiles and the merged catalogue
    if (params.qa) {
        ch_qa_files = ch_tile_files.mix(ch_band_cutout, FIT_LR.out.tile).map { meta, files -> files }.flatten().collect()
        QA(ch_qa_files, MERGE.out.catalog, ch_plan)
        ch_versions = ch_versions.mix(QA.out.versions)
    }

    // one software_versions.yml for the run
    ch_versions.collect().map { files ->
        Jointphot.mergeVersions(files, [Nextflow: nextflow.version.toString(), 'jointphot-pipeline': workflow.manifest.version])
    }.collectFile(name: 'software_versions.yml', storeDir: "${P.outdir}/pipeline_info")

    emit:
    catalog = MERGE.out.catalog
}

workflow {
    if (P.tile_id != null)
        log.info "jointphot: the job key tile_id=${P.tile_id} is ignored; the pipeline runs --tiles ${P.tiles} (use --tiles ${P.tile_id} for that tile only)"
    log.info "jointphot: results in ${file(P.outdir)}"

    def jobFile = Jointphot.contentFile(workflow.workDir.resolve('jointphot-jobs'), 'job', groovy.json.JsonOutput.toJson(job))
    JOINTPHOT(Channel.value(groovy.json.JsonOutput.toJson(Jointphot.stagedJob(job, inputFiles))), Channel.value(inputFiles),
              Channel.value(jobFile))
}

// at the end: the list of failed tiles and why (the run exits non-zero through workflow.failOnIgnore)
workflow.onComplete {
    def report = Jointphot.failureReport(Jointphot.mergedTiles.size() > 0)
    def info = file("${P.outdir}/pipeline_info")
    info.mkdirs()
    info.resolve('failed_tiles.tsv').text = Jointphot.failureTsv()
    if (report) {
        log.error report.trim()
    } else if (workflow.success) {
        log.info "jointphot: all ${Jointphot.plannedTiles.size()} tile(s) done; catalogue: ${file(P.outdir)}/catalog.fits"
    }
}
