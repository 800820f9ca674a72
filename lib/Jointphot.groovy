//
// Helpers of the jointphot Nextflow pipeline (Nextflow puts lib/ on the script classpath).
//
//  * parameter help and validation from nextflow_schema.json (nf-schema is a plugin from the
//    Nextflow plugin registry and cannot be installed offline, so this does the checks the
//    pipeline needs: unknown names, required, type, enum, pattern, minimum, items, file exists)
//  * the job file written for `jointphot plan` (only job keys, absolute paths)
//  * tile selection from plan.json
//  * the error strategy of the per-tile steps, which records why a tile failed
//  * the merged software_versions.yml
//
import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import org.yaml.snakeyaml.DumperOptions
import org.yaml.snakeyaml.Yaml

class Jointphot {

    /** Schema groups ($defs) whose parameters are job-file keys (written to the job for `jointphot plan`). */
    static final List<String> JOB_GROUPS = ['job_file_keys', 'jointphot_job_keys', 'legacy_job_keys']

    /**
     * Job keys of the original tool that name locations of its own outputs: not passed to jointphot.
     * The job for `jointphot plan` gets workdir "." (the plan task's directory); every later step
     * runs with --dir . in its own task directory, and publishDir puts the results into --outdir.
     */
    static final List<String> NOT_PASSED = ['workdir', 'cutout_output_dir', 'tile_id']

    /** Exit statuses worth a retry: killed (SIGKILL/OOM 137, SIGTERM 143), Slurm time limit/USR2 (140), 104 (connection reset). */
    static final List<Integer> TRANSIENT_EXIT_STATUS = ((130..145) + [104]) as List<Integer>

    // ------------------------------------------------------------------ schema, help, validation

    static Map loadSchema(Path file) {
        return (Map) new JsonSlurper().parse(file.toFile())
    }

    /** name -> [group: groupName, groupTitle: .., def: propertyDefinition], in schema order. */
    static Map<String, Map> properties(Map schema) {
        def out = new LinkedHashMap<String, Map>()
        def defs = (Map) (schema['$defs'] ?: schema['definitions'] ?: [:])
        defs.each { String g, Map grp ->
            ((Map) grp.properties ?: [:]).each { String name, Map d ->
                out[name] = [group: g, groupTitle: grp.title ?: g, def: d, required: ((List) grp.required ?: []).contains(name)]
            }
        }
        ((Map) schema.properties ?: [:]).each { String name, Map d ->
            out[name] = [group: '', groupTitle: 'Other', def: d, required: ((List) schema.required ?: []).contains(name)]
        }
        return out
    }

    static String help(Map schema, String command, boolean showHidden = false) {
        def props = properties(schema)
        def sb = new StringBuilder()
        sb << "${schema.title}\n${schema.description}\n\n"
        sb << "Usage:\n  ${command}\n\n"
        def byGroup = props.groupBy { it.value.groupTitle }
        byGroup.each { String title, Map<String, Map> members ->
            def shown = members.findAll { showHidden || !it.value.def.hidden }
            if (!shown) return
            sb << "${title}:\n"
            def width = shown.keySet().collect { it.size() }.max() + 4
            shown.each { String name, Map p ->
                def d = (Map) p.def
                def type = d.type instanceof List ? ((List) d.type).join('|') : d.type
                def extra = []
                if (p.required) extra << 'required'
                if (d.enum) extra << "one of ${((List) d.enum).join(', ')}"
                if (d.containsKey('default') && d.default != '' && d.default != null) extra << "default: ${d.default instanceof List ? JsonOutput.toJson(d.default) : d.default}"
                sb << "  ${('--' + name).padRight(width)}[${type}] ${d.description ?: ''}${extra ? ' (' + extra.join('; ') + ')' : ''}\n"
            }
            sb << "\n"
        }
        if (!showHidden) sb << "Hidden parameters (legacy job keys, testing switches): --help_all true\n"
        return sb.toString()
    }

    /**
     * Normalise CLI-typed values (e.g. "60,60" for an array, 3 for a string param) and check every
     * parameter against the schema. Returns [params: normalisedMap, errors: List<String>].
     */
    static Map validate(Map params, Map schema, List<Path> baseDir) {
        params = plainStrings(params)
        def props = properties(schema)
        def errors = []
        def out = new LinkedHashMap(params)
        // unknown parameters (Nextflow also adds a camelCase twin of --kebab-case names: skip those)
        def camel = { String s -> s.replaceAll(/[-_]([a-z])/) { all, c -> c.toUpperCase() } }
        def known = props.keySet()
        def knownCamel = known.collect { camel(it) } as Set
        params.keySet().each { String k ->
            if (known.contains(k)) return
            if (k.contains('-') && known.contains(k.replace('-', '_'))) return
            if (knownCamel.contains(k) && !known.contains(k) && params.keySet().any { it != k && camel(it) == k }) return
            def near = known.findAll { levenshtein(it, k) <= Math.max(2, (int) (k.size() / 4)) }
            errors << "Unknown parameter --${k}" + (near ? " (did you mean ${near.collect { '--' + it }.join(' or ')}?)" : '') +
                      ": it is not in nextflow_schema.json (see --help)"
        }
        def several = params.lr_bands != null
        def perBand = bandKeys(schema)
        props.each { String name, Map p ->
            def d = (Map) p.def
            def v = params.containsKey(name) ? params[name] : (params.containsKey(name.replace('_', '-')) ? params[name.replace('_', '-')] : null)
            if (v == null || (v instanceof String && v == '' && !p.required)) {
                if (p.required && !(several && name in perBand)) errors << "Missing required parameter --${name}: ${d.description}"
                return
            }
            def r = checkValue("--${name}", v, d, baseDir)
            errors.addAll(r.errors)
            out[name] = r.value
        }
        // each band of --lr_bands: per-band keys only, each checked as its top-level key, the required ones present
        if (several && out.lr_bands instanceof List) {
            out.lr_bands = ((List) out.lr_bands).withIndex().collect { Object e, int i ->
                if (!(e instanceof Map)) return e
                def band = new LinkedHashMap((Map) e)
                def label = "--lr_bands[${i}]"
                (band.keySet() - perBand).each { errors << "${label}: '${it}' is not a per-band key (per-band keys: ${perBand.join(', ')})" }
                (band.keySet().intersect(perBand)).each { String k ->
                    def r = checkValue("${label}.${k}", band[k], (Map) props[k].def, baseDir)
                    errors.addAll(r.errors)
                    band[k] = r.value
                }
                perBand.findAll { props[it].required && band[it] == null && out[it] == null }
                       .each { errors << "${label}: missing required key ${it}: ${props[it].def.description}" }
                return band
            }
        }
        // PSF given as a file must exist (its type decides whether the value is a path or an FWHM)
        def psfViews = [['--hr', out, 'hr']] + (several && out.lr_bands instanceof List
            ? ((List) out.lr_bands).withIndex().findAll { it[0] instanceof Map }.collect { e, i -> ["--lr_bands[${i}].lr".toString(), out + (Map) e, 'lr'] }
            : [['--lr', out, 'lr']])
        psfViews.each { pv ->
            def (String label, Map view, String b) = pv
            def v = view["${b}_image_psf"]
            def t = view["${b}_psf_type"]
            if (t == 'fwhm' && v instanceof String && !(v ==~ /[-+]?\d+(\.\d*)?([eE][-+]?\d+)?/))
                errors << "${label}_image_psf: with ${b}_psf_type fwhm it must be the FWHM in arcsec (a number), not '${v}'"
            if (t in ['fits', 'psfex'] && v instanceof Number)
                errors << "${label}_image_psf: with ${b}_psf_type ${t} it must be a file, not the number ${v}"
            if (v instanceof String && t != 'fwhm' && !(v ==~ /[-+]?\d+(\.\d*)?([eE][-+]?\d+)?/)) {
                def f = resolve(v, baseDir)
                if (!Files.isRegularFile(f)) errors << "${label}_image_psf: file not found: ${v}" + (f.toString() != v ? " (resolved to ${f})" : '')
            }
        }
        return [params: out, errors: errors]
    }

    /** The per-band job keys: the properties of lr_bands' items in the schema (jobfile.BAND_KEYS). */
    static List<String> bandKeys(Map schema) {
        def d = (Map) properties(schema).lr_bands?.def
        return d ? (((Map) ((Map) d.items).properties).keySet() as List<String>) : []
    }

    private static Map checkValue(String label, Object v, Map d, List<Path> baseDir) {
        def errors = []
        List types = d.type instanceof List ? (List) d.type : [d.type]
        // values typed by the Nextflow command line: --tiles 3 gives an Integer, --x 60,60 a String
        if (types == ['string'] && (v instanceof Number || v instanceof Boolean)) v = v.toString()
        if (types == ['array'] && v instanceof String) v = ((String) v).split(/\s*,\s*/).findAll { it != '' }.collect { numberOrString(it) }
        if (types == ['array'] && v instanceof Number) v = [v, v]
        if (types == ['boolean'] && v instanceof String && v.toLowerCase() in ['true', 'false']) v = v.toLowerCase() == 'true'
        if (!types.any { isType(v, (String) it) }) {
            errors << "${label}: expected ${types.join(' or ')}, got ${describe(v)}"
            return [value: v, errors: errors]
        }
        if (d.enum && !((List) d.enum).contains(v))
            errors << "${label}: '${v}' is not one of ${((List) d.enum).join(', ')}"
        if (d.pattern && v instanceof String && !(v ==~ (String) d.pattern))
            errors << "${label}: '${v}' does not match the expected form ${d.pattern}"
        if (v instanceof Number) {
            if (d.containsKey('minimum') && v < (Number) d.minimum) errors << "${label}: ${v} is less than the minimum ${d.minimum}"
            if (d.containsKey('exclusiveMinimum') && v <= (Number) d.exclusiveMinimum) errors << "${label}: ${v} must be greater than ${d.exclusiveMinimum}"
            if (d.containsKey('maximum') && v > (Number) d.maximum) errors << "${label}: ${v} is greater than the maximum ${d.maximum}"
        }
        if (v instanceof List) {
            def n = ((List) v).size()
            if (d.containsKey('minItems') && n < (int) d.minItems) errors << "${label}: needs at least ${d.minItems} values, got ${n}"
            if (d.containsKey('maxItems') && n > (int) d.maxItems) errors << "${label}: takes at most ${d.maxItems} values, got ${n}"
            if (d.items) ((List) v).eachWithIndex { x, i -> errors.addAll(checkValue("${label}[${i}]", x, (Map) d.items, baseDir).errors) }
        }
        if (d.exists && v instanceof String && !isNone(v)) {
            def f = resolve((String) v, baseDir)
            if (d.format == 'file-path' && !Files.isRegularFile(f)) errors << "${label}: file not found: ${v}" + (f.toString() != v ? " (resolved to ${f})" : '')
            if (d.format == 'directory-path' && !Files.isDirectory(f)) errors << "${label}: directory not found: ${v}" + (f.toString() != v ? " (resolved to ${f})" : '')
        }
        return [value: v, errors: errors]
    }

    private static boolean isType(Object v, String t) {
        switch (t) {
            case 'string': return v instanceof CharSequence
            case 'number': return v instanceof Number
            case 'integer': return v instanceof Integer || v instanceof Long || v instanceof BigInteger ||
                                   ((v instanceof BigDecimal || v instanceof Double || v instanceof Float) && v == Math.floor((double) v))
            case 'boolean': return v instanceof Boolean
            case 'array': return v instanceof List
            case 'object': return v instanceof Map
            case 'null': return v == null
            default: return true
        }
    }

    private static Object numberOrString(String s) {
        if (s ==~ /[-+]?\d+/) return Long.parseLong(s)
        if (s ==~ /[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?/) return new BigDecimal(s)
        return s
    }

    private static String describe(Object v) {
        return v instanceof CharSequence ? "the string '${v}'" : "${v} (${v?.getClass()?.simpleName})"
    }

    static int levenshtein(String a, String b) {
        int[] prev = (0..b.size()) as int[]
        for (int i = 1; i <= a.size(); i++) {
            int[] cur = new int[b.size() + 1]
            cur[0] = i
            for (int j = 1; j <= b.size(); j++)
                cur[j] = Math.min(Math.min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            prev = cur
        }
        return prev[b.size()]
    }

    /**
     * The directory relative job paths are resolved against: that of the -params-file (jointphot
     * resolves a job file's relative paths against the job file's directory), else the launch dir.
     */
    static List<Path> jobBaseDirs(String commandLine, Path launchDir, Map env) {
        def toks = (commandLine ?: '').tokenize(' ')
        def i = toks.indexOf('-params-file')
        String pf = i >= 0 && i + 1 < toks.size() ? toks[i + 1] : (env['NXF_PARAMS_FILE'] as String)
        if (!pf || pf.contains('://')) return [launchDir]
        def f = resolve(pf.replaceAll(/^['"]|['"]$/, ''), [launchDir])
        return Files.isRegularFile(f) && f.getParent() != launchDir ? [launchDir, f.getParent()] : [launchDir]
    }

    /** p as an absolute path: the first of baseDirs where it exists (else relative to the first). */
    static Path resolve(String p, List<Path> baseDirs) {
        def f = Paths.get(p.startsWith('~/') ? System.getProperty('user.home') + p.substring(1) : p)
        if (f.isAbsolute()) return f.normalize()
        def found = baseDirs.collect { it.resolve(f).normalize() }.find { Files.exists(it) }
        return found ?: baseDirs[0].resolve(f).normalize()
    }

    // ------------------------------------------------------------------ job file for `jointphot plan`

    /** The job keys (schema groups JOB_GROUPS) that are set, with file and directory paths made absolute. */
    static Map job(Map params, Map schema, List<Path> baseDir) {
        params = plainStrings(params)
        def props = properties(schema)
        def job = new LinkedHashMap()
        job.workdir = '.'
        props.each { String name, Map p ->
            if (!(p.group in JOB_GROUPS) || name in NOT_PASSED) return
            def v = params[name]
            if (v == null) return
            if (name == 'lr_bands' && v instanceof List) {
                v = ((List) v).collect { Object e -> e instanceof Map ? absoluteBand((Map) e, params, props, baseDir) : e }
            } else if (isPathKey(name, (Map) p.def, params) && v instanceof String) {
                v = realPath(resolve((String) v, baseDir)).toString()
            }
            job[name] = v
        }
        return job
    }

    /** One object of lr_bands with its file paths made absolute (its keys over the top-level ones decide what is a path). */
    private static Map absoluteBand(Map band, Map params, Map props, List<Path> baseDir) {
        def view = params + band
        return band.collectEntries { k, v ->
            def p = props[k]
            [k, p && v instanceof String && isPathKey((String) k, (Map) p.def, view) ? realPath(resolve((String) v, baseDir)).toString() : v]
        }
    }

    /** Params with GString values (e.g. "${projectDir}/x" in a config) turned into Strings, lists too. */
    static Map plainStrings(Map params) {
        def plain = { v -> v instanceof GString ? v.toString() : v }
        return params.collectEntries { k, v -> [k, v instanceof List ? v.collect(plain) : plain(v)] }
    }

    /** 'none' (any case) means "no file" in the original tool's job files (e.g. hr_large_image_wht_name). */
    static boolean isNone(Object v) { v instanceof CharSequence && v.toString().trim().toLowerCase() in ['none', ''] }

    static boolean isPathKey(String name, Map d, Map params) {
        if (isNone(params[name])) return false
        if (d.format in ['file-path', 'directory-path']) return true
        if (name == 'hr_image_psf' || name == 'lr_image_psf') {
            def v = params[name]
            def t = params[name.replace('_image_psf', '_psf_type')]
            return v instanceof String && t != 'fwhm' && !(v ==~ /[-+]?\d+(\.\d*)?([eE][-+]?\d+)?/)
        }
        return false
    }

    /** The existing input files and directories named by the job (staged into tasks so container engines mount them). */
    static List<Path> inputFiles(Map job, Map schema) {
        def props = properties(schema)
        def views = [job] + ((job.lr_bands instanceof List) ? ((List) job.lr_bands).findAll { it instanceof Map }.collect { job + (Map) it } : [])
        return views.collectMany { Map view ->
            view.findAll { k, v -> props[k] && k != 'lr_bands' && isPathKey((String) k, (Map) props[k].def, view) && v instanceof String }
                .collect { k, v -> Paths.get((String) v) }
        }.findAll { Files.exists(it) }.unique()
    }

    /**
     * The job as the PLAN task reads it: each file of `inputs` (staged there as inputs/in<i>/<name>, i from 1, in
     * this order) named by its staged location (`jointphot plan --as-given` records the paths of `job`).
     */
    static Map stagedJob(Map job, List<Path> inputs) {
        def where = [:]
        inputs.eachWithIndex { Path f, int i -> where[f.toString()] = "inputs/in${i + 1}/${f.fileName}".toString() }
        def moved = { Map view -> view.collectEntries { k, v -> [k, v instanceof String && where.containsKey(v) ? where[v] : v] } }
        def staged = moved(job)
        if (staged.lr_bands instanceof List) staged.lr_bands = ((List) staged.lr_bands).collect { it instanceof Map ? moved((Map) it) : it }
        return staged
    }

    /** A file `<stem>_<hash of text>.json` in `dir` holding `text` (written once: its time, and so the hash of the
     *  task that stages it, stays the same from run to run). */
    static Path contentFile(Path dir, String stem, String text) {
        def digest = java.security.MessageDigest.getInstance('SHA-256').digest(text.getBytes('UTF-8')).encodeHex().toString()
        def f = dir.resolve("${stem}_${digest.take(16)}.json".toString())
        if (!Files.exists(f)) {
            Files.createDirectories(dir)
            def tmp = dir.resolve("${f.fileName}.${UUID.randomUUID()}.tmp".toString())
            tmp.text = text
            Files.move(tmp, f, java.nio.file.StandardCopyOption.REPLACE_EXISTING)
        }
        return f
    }

    /** The LR band names of a plan.json, in job order. */
    static List<String> bandNames(Path plan) {
        def p = (Map) new JsonSlurper().parse(plan.toFile())
        def listed = ((Map) p.job)?.lr_bands
        return listed instanceof List ? ((List) listed).collect { ((Map) it).lr_band as String } : ((Map) p.bands).keySet() as List<String>
    }

    // ------------------------------------------------------------------ parts of a tile

    /** The part files of `jointphot plan --parts` (hr.json, <band>.json), each parsed once per run. */
    private static final Map<String, Map> partFiles = new java.util.concurrent.ConcurrentHashMap<String, Map>()

    private static Map partFile(Path parts, String name) {
        def f = parts.resolve("${name}.json".toString())
        return partFiles.computeIfAbsent(f.toString()) { (Map) new JsonSlurper().parse(f.toFile()) }
    }

    /**
     * The units of work of one tile, one per part (HR, then each LR band in job order):
     * [meta, cutout plan, cutout inputs, steps plan, steps inputs]. meta is [id: tile] or [id: tile, band: band];
     * the inputs are the files the part's cutout step reads (the large images) and those its later steps read
     * (PSFs, offsets, SExtractor files), staged in this order; each plan is the part's plan of this tile alone as
     * those tasks see it (`jointphot plan --parts`: the staged files at inputs/in<i>/<name>, no host path), as
     * JSON: a value, so that a task's hash changes only when its own part does (adding a band re-runs that
     * band's tasks only).
     */
    static List tileParts(Path parts, List<String> bands, int tileId) {
        return (['hr'] + bands).collect { String name ->
            def p = partFile(parts, name)
            def unit = { String step ->
                def plan = new LinkedHashMap((Map) ((Map) p.plans)[step])
                plan.tiles = ((List) plan.tiles).findAll { ((Map) it).tile_id as int == tileId }
                [JsonOutput.toJson(plan), ((List) ((Map) p.inputs)[step]).collect { Paths.get((String) it) }]
            }
            [name == 'hr' ? [id: tileId] : [id: tileId, band: name]] + unit('cutout') + unit('steps')
        }
    }

    /** `s` as one single-quoted shell word. */
    static String shellQuote(String s) { "'" + s.replace("'", "'\\''") + "'" }

    private static Path realPath(Path p) {
        try { return p.toRealPath() } catch (IOException ignored) { return p }
    }

    // ------------------------------------------------------------------ tiles

    static String nnnn(Object tileId) { String.format('%04d', tileId as int) }

    /** The tile ids the PLAN task selected (`jointphot select-tiles`: the one --tiles grammar, with `jointphot run`'s). */
    static List<Integer> selectedTiles(Path tilesJson) {
        return ((List) new JsonSlurper().parse(tilesJson.toFile())).collect { it as int }
    }

    // ------------------------------------------------------------------ failures

    static final List<Map> failures = Collections.synchronizedList(new ArrayList<Map>())
    static final Set<Integer> plannedTiles = Collections.synchronizedSet(new TreeSet<Integer>())
    static final Set<Integer> mergedTiles = Collections.synchronizedSet(new TreeSet<Integer>())

    /**
     * errorStrategy of the per-tile steps: retry a transient failure up to maxRetries times, then
     * (or at once for any other failure) record the tile and the reason and let the other tiles go on.
     */
    static String tileErrorStrategy(task, int maxRetries, Object tileId, String band = null) {
        def status = task.exitStatus as Integer
        if (status in TRANSIENT_EXIT_STATUS && (task.attempt as int) <= maxRetries) return 'retry'
        def step = task.process.toString().tokenize(':')[-1]
        String reason
        if (status == 0) reason = 'the step exited 0 but did not write its output files'
        else if (status == Integer.MAX_VALUE) reason = 'the task was killed or lost by the executor (no exit status)'
        else reason = lastError(task.workDir as Path) ?: "exit status ${status}, no message on stderr"
        if (status in TRANSIENT_EXIT_STATUS) reason = "${reason} [exit ${status}: killed/out of memory/time limit, after ${task.attempt} attempts]"
        failures << [tile: tileId as int, band: band, step: step, exit: status, attempt: task.attempt, reason: reason, workDir: task.workDir?.toString()]
        return 'ignore'
    }

    private static String lastError(Path workDir) {
        if (workDir == null) return null
        def f = workDir.resolve('.command.err')
        if (!Files.exists(f)) return null
        def lines = f.readLines().collect { it.replaceAll(/\u001B\[[0-9;]*[A-Za-z]/, '').trim() }.findAll { it }
        if (!lines) return null
        def err = lines.reverse().find { it =~ /(?i)error|exception|failed|not found|invalid|cannot/ } ?: lines[-1]
        return err.size() > 400 ? err.substring(0, 400) + '...' : err
    }

    static List<Integer> missingTiles() {
        return (plannedTiles - mergedTiles).toList().sort()
    }

    /**
     * The end-of-run report of failed tiles and (tile, band)s ('' when none failed), also written as TSV to
     * pipeline_info.  A tile whose HR steps failed is missing from the catalogue; a tile of which only some
     * bands' FIT_LR failed is in it, with those bands' columns NaN (flag LR_OFF_IMAGE, named in its header).
     */
    static String failureReport(boolean mergeRan) {
        def missing = mergeRan ? missingTiles() : (plannedTiles.toList() - mergedTiles.toList()).sort()
        def failed = failures.collect { it }.sort { a, b -> a.tile <=> b.tile ?: (a.band ?: '') <=> (b.band ?: '') }
        if (!failed && !missing) return ''
        def sb = new StringBuilder()
        def ids = (failed.findAll { !it.band || it.tile in missing }.collect { it.tile } + missing).unique().sort()
        if (ids) {
            sb << "jointphot: ${ids.size()} of ${plannedTiles.size() ?: '?'} tile(s) failed: ${ids.join(', ')}. "
            sb << (mergeRan ? "They are missing from the merged catalogue (its header lists them).\n"
                            : "No merged catalogue was written.\n")
        }
        def bandOnly = failed.findAll { it.band && !(it.tile in missing) }
        if (bandOnly) {
            sb << "jointphot: ${bandOnly.size()} (tile, band) fit(s) failed: ${bandOnly.collect { "tile ${it.tile} band ${it.band}" }.join(', ')}. "
            sb << (mergeRan ? "Those bands' columns of those tiles are NaN in the merged catalogue (flag LR_OFF_IMAGE; its header names them).\n"
                            : "No merged catalogue was written.\n")
        }
        failed.each { f ->
            sb << "  tile ${f.tile}${f.band ? ' band ' + f.band : ''}: ${f.step} failed (exit ${f.exit}): ${f.reason}\n"
            sb << "          log: ${f.workDir}/.command.err\n"
        }
        (missing - failed.collect { it.tile }).each { sb << "  tile ${it}: missing (no error recorded)\n" }
        return sb.toString()
    }

    static String failureTsv() {
        def sb = new StringBuilder("tile_id\tband\tstep\texit_status\tattempts\treason\twork_dir\n")
        failures.collect { it }.sort { it.tile }.each { f ->
            sb << "${f.tile}\t${f.band ?: ''}\t${f.step}\t${f.exit}\t${f.attempt}\t${f.reason.toString().replace('\t', ' ')}\t${f.workDir}\n"
        }
        return sb.toString()
    }

    // ------------------------------------------------------------------ versions

    /** Merge the versions.yml of all tasks into one YAML document (one entry per process). */
    static String mergeVersions(List files, Map workflowVersions) {
        def merged = new TreeMap<String, Map>()
        files.each { f ->
            def y = new Yaml().load(((Path) f).text)
            if (y instanceof Map) ((Map) y).each { k, v ->
                def name = k.toString().tokenize(':')[-1]
                if (!merged.containsKey(name)) merged[name] = new TreeMap()
                if (v instanceof Map) ((Map) v).each { tool, ver -> merged[name][tool.toString()] = ver?.toString() }
            }
        }
        merged['Workflow'] = new TreeMap(workflowVersions.collectEntries { k, v -> [k.toString(), v?.toString()] })
        def opts = new DumperOptions()
        opts.setDefaultFlowStyle(DumperOptions.FlowStyle.BLOCK)
        opts.setIndent(4)
        return new Yaml(opts).dump(merged)
    }
}
