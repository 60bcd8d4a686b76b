import CoreML
import CoreVideo
import CryptoKit
import Foundation
import os

enum GenericJobError: LocalizedError {
    case unsupportedSchema(String, Int)
    case inputSize(String, expected: Int, found: Int)
    case unknownDataType(String)
    case needsIOS18(String)
    case unsupportedOutput(String)

    var errorDescription: String? {
        switch self {
        case .unsupportedSchema(let schema, let version):
            return "job.json is \(schema) v\(version); this runner reads \(GenericContractNames.jobSchema) v\(GenericContractNames.jobSchemaVersion) (update the runner)"
        case .inputSize(let path, let expected, let found):
            return "\(path): \(found) bytes, expected \(expected) for the job's dtype and shape"
        case .unknownDataType(let dtype):
            return "input data type \(dtype) is not one the runner can feed"
        case .needsIOS18(let what):
            return "\(what) needs iOS 18 or later"
        case .unsupportedOutput(let name):
            return "output \(name) is not a float32/float16/float64/int32 multi-array; outputs not written"
        }
    }
}

/// One input of a generic job, ready to predict: every feature built before any clock starts.
struct GenericInput {
    let inputId: String
    let provider: MLFeatureProvider

    /// Multi-arrays from little-endian bytes (through the destination's strides), images as 32BGRA pixel buffers.
    static func load(_ input: GenericJobInput, paths: ContainerPaths) throws -> GenericInput {
        var values: [String: MLFeatureValue] = [:]
        for feature in input.features {
            let data = try Data(contentsOf: paths.resolve(feature.path))
            let count = feature.shape.reduce(1, *)
            if feature.kind == "image" {
                guard data.count == count else {
                    throw GenericJobError.inputSize(feature.path, expected: count, found: data.count)
                }
                values[feature.name] = MLFeatureValue(pixelBuffer: try pixelBuffer(data, height: feature.shape[0], width: feature.shape[1]))
                continue
            }
            let (dataType, size) = try arrayType(feature.dtype)
            guard data.count == count * size else {
                throw GenericJobError.inputSize(feature.path, expected: count * size, found: data.count)
            }
            let array = try MLMultiArray(shape: feature.shape.map { NSNumber(value: $0) }, dataType: dataType)
            let dense = Strided.contiguous(feature.shape)
            array.withUnsafeMutableBytes { destination, strides in
                if strides == dense {
                    _ = data.copyBytes(to: destination, count: data.count)  // same layout: one copy
                    return
                }
                for flat in 0..<count {  // padded storage: each element to its strided offset
                    var rest = flat
                    var index = Array(repeating: 0, count: feature.shape.count)
                    for axis in 0..<feature.shape.count {
                        index[axis] = rest / dense[axis]
                        rest %= dense[axis]
                    }
                    let target = Strided.offset(index, strides: strides) * size
                    data.withUnsafeBytes { source in
                        destination.baseAddress!.advanced(by: target).copyMemory(
                            from: source.baseAddress!.advanced(by: flat * size), byteCount: size)
                    }
                }
            }
            values[feature.name] = MLFeatureValue(multiArray: array)
        }
        return GenericInput(inputId: input.input_id, provider: try MLDictionaryFeatureProvider(dictionary: values))
    }

    static func arrayType(_ dtype: String) throws -> (MLMultiArrayDataType, Int) {
        switch dtype {
        case "float32": return (.float32, 4)
        case "float16": return (.float16, 2)
        case "float64": return (.double, 8)
        case "int32": return (.int32, 4)
        default: throw GenericJobError.unknownDataType(dtype)
        }
    }

    /// RGB bytes [H, W, 3] into a 32BGRA pixel buffer (Core ML converts to the model's colour space).
    static func pixelBuffer(_ rgb: Data, height: Int, width: Int) throws -> CVPixelBuffer {
        var created: CVPixelBuffer?
        let status = CVPixelBufferCreate(kCFAllocatorDefault, width, height, kCVPixelFormatType_32BGRA, nil, &created)
        guard status == kCVReturnSuccess, let buffer = created else {
            throw GenericJobError.unknownDataType("image (CVPixelBufferCreate failed: \(status))")
        }
        CVPixelBufferLockBaseAddress(buffer, [])
        defer { CVPixelBufferUnlockBaseAddress(buffer, []) }
        let rowBytes = CVPixelBufferGetBytesPerRow(buffer)
        let base = CVPixelBufferGetBaseAddress(buffer)!.assumingMemoryBound(to: UInt8.self)
        rgb.withUnsafeBytes { source in
            let pixels = source.bindMemory(to: UInt8.self)
            for row in 0..<height {
                for column in 0..<width {
                    let from = (row * width + column) * 3
                    let to = row * rowBytes + column * 4
                    base[to] = pixels[from + 2]
                    base[to + 1] = pixels[from + 1]
                    base[to + 2] = pixels[from]
                    base[to + 3] = 255
                }
            }
        }
        return buffer
    }
}

/// Runs one generic job (bench.generic-job v1) and writes results/<id>/{result.partial.json, outputs/, result.json,
/// DONE}, like JobRunner: raw nanoseconds, one prediction per sample, judgement on the host. Outputs of the first
/// pass over the inputs are written after the timed part, each as little-endian bytes with its size and sha256.
final class GenericJobRunner {
    private let jobId: String
    private let paths: ContainerPaths
    private let progress: @Sendable (String) -> Void
    private let appState: AppStateWatch
    private let log = Logger(subsystem: "bench.runner", category: "generic-job")
    private let origin = Monotonic.now()
    private var result: GenericResultFile
    private var compiled: [String: URL] = [:]
    private var compileErrors: [String: String] = [:]

    init(jobId: String, paths: ContainerPaths, device: DeviceConditions, appState: AppStateWatch,
         progress: @escaping @Sendable (String) -> Void) {
        self.jobId = jobId
        self.paths = paths
        self.appState = appState
        self.progress = progress
        self.result = GenericResultFile(
            job_id: jobId, status: "partial", error: nil, runner_version: DeviceProbe.runnerVersion(),
            started_at: WallClock.iso8601(), finished_at: nil, device: device, compiles: [], steps: [])
    }

    /// Whether job.json names a generic job (read before choosing the runner; any doubt goes to JobRunner,
    /// which reports an unreadable job itself).
    static func isGenericJob(jobId: String, paths: ContainerPaths) -> Bool {
        guard ContainerPaths.isValidJobId(jobId), let data = try? Data(contentsOf: paths.jobFile(jobId)),
              let header = try? JSONDecoder().decode(JobHeader.self, from: data) else {
            return false
        }
        return header.schema == GenericContractNames.jobSchema
    }

    func run() async {
        say("generic job \(jobId): started")
        clearStaleResults()
        writePartial()
        do {
            let job = try loadJob()
            try await measure(job)
            result.status = "complete"
        } catch {
            result.status = "failed"
            result.error = describe(error)
            log.error("job \(self.jobId, privacy: .public) failed: \(self.describe(error), privacy: .public)")
        }
        result.finished_at = WallClock.iso8601()
        finish()
        removeCompiledModels()
    }

    private func loadJob() throws -> GenericJob {
        guard ContainerPaths.isValidJobId(jobId) else {
            throw JobError.invalidJobId(jobId)
        }
        let job: GenericJob
        do {
            let data = try Data(contentsOf: paths.jobFile(jobId))
            let header = try JSONDecoder().decode(JobHeader.self, from: data)
            guard header.schema == GenericContractNames.jobSchema,
                  header.schema_version == GenericContractNames.jobSchemaVersion else {
                throw GenericJobError.unsupportedSchema(header.schema, header.schema_version)
            }
            job = try JSONDecoder().decode(GenericJob.self, from: data)
        } catch let error as GenericJobError {
            throw error
        } catch {
            throw JobError.unreadableJob(describe(error))
        }
        guard job.job_id == jobId else {
            throw JobError.jobIdMismatch(jobId, job.job_id)
        }
        return job
    }

    private func measure(_ job: GenericJob) async throws {
        try appState.requireForeground(during: "start")
        for model in job.models {
            await compile(model)
            writePartial()
        }
        let models = Dictionary(job.models.map { ($0.variant_id, $0) }, uniquingKeysWith: { first, _ in first })
        for (index, step) in job.steps.enumerated() {
            say("step \(index + 1)/\(job.steps.count): \(step.variant_id) on \(step.compute_unit)")
            var record = GenericStepRecord(variant_id: step.variant_id, compute_unit: step.compute_unit)
            do {
                guard let model = models[step.variant_id] else {
                    throw JobError.unknownVariant(step.variant_id)
                }
                try await run(step, index: index, model: model, job: job, into: &record)
            } catch {
                try appState.requireForeground(during: "step \(index + 1)/\(job.steps.count)")
                record.error = describe(error)
                log.error("step \(index, privacy: .public) failed: \(self.describe(error), privacy: .public)")
            }
            result.steps.append(record)
            writePartial()
        }
    }

    private func compile(_ model: GenericJobModel) async {
        var record = GenericCompileRecord(variant_id: model.variant_id)
        do {
            let source = try paths.resolve(model.package)
            let start = Monotonic.now()
            let url = try await MLModel.compileModel(at: source)
            record.compile_ns = Monotonic.elapsed(since: start)
            compiled[model.variant_id] = url
        } catch {
            record.error = describe(error)
            compileErrors[model.variant_id] = "compile failed: \(describe(error))"
        }
        result.compiles.append(record)
    }

    private func removeCompiledModels() {
        for url in compiled.values {
            try? FileManager.default.removeItem(at: url)
        }
        compiled.removeAll()
    }

    // MARK: - one step

    private func run(_ step: JobStep, index: Int, model: GenericJobModel, job: GenericJob,
                     into record: inout GenericStepRecord) async throws {
        guard let url = compiled[model.variant_id] else {
            throw JobError.modelUnavailable(compileErrors[model.variant_id] ?? "model \(model.variant_id) was not compiled")
        }
        guard let units = computeUnits(step.compute_unit) else {
            throw JobError.unknownComputeUnit(step.compute_unit)
        }
        let inputs = try model.inputs.map { try GenericInput.load($0, paths: paths) }
        let configuration = MLModelConfiguration()
        configuration.computeUnits = units
        if let function = model.function {
            guard #available(iOS 18.0, *) else {
                throw GenericJobError.needsIOS18("choosing function \(function) of a multi-function package")
            }
            configuration.functionName = function
        }
        if model.stateful {
            guard #available(iOS 18.0, *) else {
                throw GenericJobError.needsIOS18("a stateful model (MLState)")
            }
        }
        // Cold: the first load with this configuration after compiling; released before the warm one.
        record.cold_load_ns = try await timedLoad(url, configuration).nanoseconds
        let (loaded, warmNs) = try await timedLoad(url, configuration)
        record.warm_load_ns = warmNs
        let what = "\(step.variant_id) on \(step.compute_unit)"
        for number in 0..<max(0, job.warmup) {
            let (warm, _) = try await foregroundPrediction(loaded, inputs[number % inputs.count], repeat: number,
                                                           stateful: model.stateful, during: what)
            record.warmup.append(warm)
            if number == 0 {
                record.first_prediction_ns = warm.predict_ns
            }
        }
        var produced: [(String, MLFeatureProvider)] = []
        for repeatIndex in 0..<max(0, job.repeats) {
            for input in inputs {
                let (measured, outputs) = try await foregroundPrediction(loaded, input, repeat: repeatIndex,
                                                                         stateful: model.stateful, during: what)
                record.samples.append(measured)
                if record.first_prediction_ns == nil {
                    record.first_prediction_ns = measured.predict_ns
                }
                if repeatIndex == 0 && model.save_outputs {
                    produced.append((input.inputId, outputs))
                }
            }
        }
        say("measured \(model.variant_id) on \(step.compute_unit): \(record.samples.count) samples")
        // After the timed part: writing outputs and reading the plan never disturb a measurement.
        if model.save_outputs {
            writeOutputs(produced, step: index, cap: job.output_cap_bytes, into: &record)
        }
        if job.compute_plan {
            await readComputePlan(url: url, units: units, function: model.function ?? "main", into: &record)
        }
    }

    private func timedLoad(_ url: URL, _ configuration: MLModelConfiguration) async throws -> (model: MLModel, nanoseconds: UInt64) {
        let start = Monotonic.now()
        let model = try await MLModel.load(contentsOf: url, configuration: configuration)
        return (model: model, nanoseconds: Monotonic.elapsed(since: start))
    }

    /// One prediction on the measurement thread, kept only if the app was in the foreground before and after it.
    private func foregroundPrediction(_ model: MLModel, _ input: GenericInput, repeat number: Int, stateful: Bool,
                                      during what: String) async throws -> (GenericSample, MLFeatureProvider) {
        try appState.requireForeground(during: what)
        let measuring = MeasurementThread.shared
        let taken = try await measuring.run { try self.predict(model, input, repeat: number, stateful: stateful) }
        try appState.requireForeground(during: what)
        return taken
    }

    /// One timed prediction; a stateful model gets a fresh state (made before the clock starts), so outputs depend
    /// on the input alone.
    private func predict(_ model: MLModel, _ input: GenericInput, repeat number: Int,
                         stateful: Bool) throws -> (GenericSample, MLFeatureProvider) {
        let t = Monotonic.elapsed(since: origin)
        let thermal = DeviceProbe.thermalState()
        let outputs: MLFeatureProvider
        let elapsed: UInt64
        if stateful {
            guard #available(iOS 18.0, *) else {
                throw GenericJobError.needsIOS18("a stateful model (MLState)")
            }
            let state = model.makeState()
            let start = Monotonic.now()
            outputs = try model.prediction(from: input.provider, using: state)
            elapsed = Monotonic.elapsed(since: start)
        } else {
            let start = Monotonic.now()
            outputs = try model.prediction(from: input.provider)
            elapsed = Monotonic.elapsed(since: start)
        }
        return (GenericSample(input_id: input.inputId, repeat: number, predict_ns: elapsed, thermal_state: thermal, t_ns: t),
                outputs)
    }

    // MARK: - outputs

    /// Every multi-array output of every saved input, dense little-endian, under results/<id>/outputs/<step>/; none
    /// when they would exceed the job's cap together or one cannot be written as the contract's types.
    private func writeOutputs(_ produced: [(String, MLFeatureProvider)], step: Int, cap: Int,
                              into record: inout GenericStepRecord) {
        var planned: [(GenericOutputRecord, Data)] = []
        do {
            for (inputId, provider) in produced {
                for name in provider.featureNames.sorted() {
                    guard let array = provider.featureValue(for: name)?.multiArrayValue else {
                        throw GenericJobError.unsupportedOutput(name)
                    }
                    let (dtype, data) = try Self.dense(array, name: name)
                    let path = "\(ContractNames.resultsFolder)/\(jobId)/\(GenericContractNames.outputsFolder)/\(step)/\(inputId)__\(name).bin"
                    let digest = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
                    planned.append((GenericOutputRecord(input_id: inputId, name: name, dtype: dtype,
                                                        shape: array.shape.map { $0.intValue }, path: path,
                                                        bytes: data.count, sha256: digest), data))
                }
            }
            let total = planned.reduce(0) { $0 + $1.1.count }
            guard total <= cap else {
                record.outputs_error = "outputs hold \(total) bytes, over the job's cap of \(cap); none written"
                return
            }
            for (output, data) in planned {
                try AtomicFile.write(data, to: paths.resolve(output.path))
            }
            record.outputs = planned.map { $0.0 }
        } catch {
            record.outputs = []
            record.outputs_error = describe(error)
        }
    }

    /// The array's elements in C order, little-endian (iOS is), read through its strides.
    static func outputType(_ type: MLMultiArrayDataType, name: String) throws -> (String, Int) {
        switch type {
        case .float32: return ("float32", 4)
        case .float16: return ("float16", 2)
        case .double: return ("float64", 8)
        case .int32: return ("int32", 4)
        default: throw GenericJobError.unsupportedOutput(name)
        }
    }

    static func dense(_ array: MLMultiArray, name: String) throws -> (String, Data) {
        let (dtype, size) = try outputType(array.dataType, name: name)
        let shape = array.shape.map { $0.intValue }
        let count = shape.reduce(1, *)
        let dense = Strided.contiguous(shape)
        var data = Data(count: count * size)
        array.withUnsafeBytes { source in
            let strides = array.strides.map { $0.intValue }
            data.withUnsafeMutableBytes { destination in
                for flat in 0..<count {
                    var rest = flat
                    var index = Array(repeating: 0, count: shape.count)
                    for axis in 0..<shape.count {
                        index[axis] = rest / dense[axis]
                        rest %= dense[axis]
                    }
                    let from = Strided.offset(index, strides: strides) * size
                    destination.baseAddress!.advanced(by: flat * size).copyMemory(
                        from: source.baseAddress!.advanced(by: from), byteCount: size)
                }
            }
        }
        return (dtype, data)
    }

    private func readComputePlan(url: URL, units: MLComputeUnits, function: String, into record: inout GenericStepRecord) async {
        if #available(iOS 17.4, *) {
            do {
                let ops = try await ComputePlanReader.read(compiledModel: url, computeUnits: units, function: function)
                record.compute_plan = GenericComputePlanRecord(model: ops)
            } catch {
                record.compute_plan_error = "MLComputePlan failed: \(describe(error))"
            }
        } else {
            record.compute_plan_error = "MLComputePlan needs iOS 17.4 or later"
        }
    }

    private func computeUnits(_ name: String) -> MLComputeUnits? {
        switch name {
        case "cpuOnly": return .cpuOnly
        case "cpuAndGPU": return .cpuAndGPU
        case "cpuAndNeuralEngine": return .cpuAndNeuralEngine
        case "all": return .all
        default: return nil
        }
    }

    // MARK: - results (as JobRunner: partial after each phase, result.json atomically, then DONE on every path)

    private func encoded(_ record: GenericResultFile? = nil) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode((record ?? result).fittedToSchema())
    }

    private func clearStaleResults() {
        guard ContainerPaths.isValidJobId(jobId) else {
            return
        }
        let folder = paths.resultsFolder(jobId)
        for name in [ContractNames.doneFile, ContractNames.resultFile, ContractNames.partialResultFile,
                     GenericContractNames.outputsFolder] {
            try? FileManager.default.removeItem(at: folder.appendingPathComponent(name))
        }
    }

    private func writePartial() {
        guard ContainerPaths.isValidJobId(jobId) else {
            return
        }
        result.app_states = appState.history
        do {
            try AtomicFile.write(encoded(), to: paths.resultsFolder(jobId).appendingPathComponent(ContractNames.partialResultFile))
        } catch {
            log.error("could not write result.partial.json: \(self.describe(error), privacy: .public)")
        }
    }

    private func finish() {
        guard ContainerPaths.isValidJobId(jobId) else {
            log.fault("job id \(self.jobId, privacy: .public) is not a valid folder name; nothing written")
            return
        }
        let folder = paths.resultsFolder(jobId)
        let resultURL = folder.appendingPathComponent(ContractNames.resultFile)
        result.app_states = appState.history
        do {
            try AtomicFile.write(encoded(), to: resultURL)
        } catch {
            let reason = "could not write result.json: \(describe(error))"
            log.fault("\(reason, privacy: .public)")
            result = failedResult(reason)
            do {
                try AtomicFile.write(encoded(result), to: resultURL)
            } catch {
                log.fault("could not write the failed result either: \(self.describe(error), privacy: .public)")
            }
        }
        do {
            try AtomicFile.write(Data((result.status + "\n").utf8), to: folder.appendingPathComponent(ContractNames.doneFile))
        } catch {
            log.fault("could not write DONE: \(self.describe(error), privacy: .public)")
        }
        say("generic job \(jobId): \(result.status)")
    }

    private func failedResult(_ reason: String) -> GenericResultFile {
        var failed = result
        failed.status = "failed"
        failed.error = reason
        failed.finished_at = failed.finished_at ?? WallClock.iso8601()
        failed.compiles = []
        failed.steps = []
        return failed
    }

    private func say(_ line: String) {
        log.notice("\(line, privacy: .public)")
        progress(line)
    }

    private func describe(_ error: Error) -> String {
        if let local = error as? LocalizedError, let text = local.errorDescription {
            return text
        }
        return String(describing: error)
    }
}
