import Foundation

// Generic jobs: any Core ML model the host imported (bench.build.imported), measured with inputs the host made from
// the model's own description. The contract is bench/deploy/schemas/generic-{job,result}.v1.schema.json, checked
// against these structs by tests/test_runner_swift.py (same discipline as Contract.swift).

enum GenericContractNames {
    static let jobSchema = "bench.generic-job"
    static let resultSchema = "bench.generic-result"
    static let jobSchemaVersion = 1
    static let resultSchemaVersion = 1
    static let outputsFolder = "outputs"
}

// MARK: - job.json (read)

struct GenericJob: Decodable {
    let schema: String
    let schema_version: Int
    let job_id: String
    let warmup: Int
    let repeats: Int
    let compute_plan: Bool
    let output_cap_bytes: Int
    let models: [GenericJobModel]
    let steps: [JobStep]
}

struct GenericJobModel: Decodable {
    let variant_id: String
    let package: String
    let function: String?
    let stateful: Bool
    let save_outputs: Bool
    let inputs: [GenericJobInput]
}

struct GenericJobInput: Decodable {
    let input_id: String
    let features: [GenericFeature]
}

struct GenericFeature: Decodable {
    let name: String
    let kind: String
    let dtype: String
    let shape: [Int]
    let path: String
}

// MARK: - result.json (written)

struct GenericResultFile: Encodable {
    var schema: String = GenericContractNames.resultSchema
    var schema_version: Int = GenericContractNames.resultSchemaVersion
    var job_id: String
    var status: String
    @Nullable var error: String? = nil
    var runner_version: String
    var started_at: String
    @Nullable var finished_at: String? = nil
    var device: DeviceConditions
    var compiles: [GenericCompileRecord]
    var steps: [GenericStepRecord]
    var app_states: [AppStateChange] = []
}

struct GenericCompileRecord: Encodable {
    var variant_id: String
    @Nullable var compile_ns: UInt64? = nil
    @Nullable var error: String? = nil
}

struct GenericSample: Encodable {
    var input_id: String
    var `repeat`: Int
    var predict_ns: UInt64
    var thermal_state: String
    var t_ns: UInt64
}

struct GenericOutputRecord: Encodable {
    var input_id: String
    var name: String
    var dtype: String
    var shape: [Int]
    var path: String
    var bytes: Int
    var sha256: String
}

struct GenericComputePlanRecord: Encodable {
    /// Core ML's per-op cost is an estimate (MLComputePlan.Cost.weight), never a measurement.
    var cost_kind: String = "estimate"
    var model: [OpRecord]
}

struct GenericStepRecord: Encodable {
    var variant_id: String
    var compute_unit: String
    @Nullable var error: String? = nil
    @Nullable var cold_load_ns: UInt64? = nil
    @Nullable var warm_load_ns: UInt64? = nil
    @Nullable var first_prediction_ns: UInt64? = nil
    var warmup: [GenericSample] = []
    var samples: [GenericSample] = []
    @Nullable var compute_plan: GenericComputePlanRecord? = nil
    @Nullable var compute_plan_error: String? = nil
    var outputs: [GenericOutputRecord] = []
    @Nullable var outputs_error: String? = nil
}

// MARK: - fitting a result to the schema

extension GenericResultFile {
    /// A copy within the schema's limits (the host refuses a whole result that breaks its schema).
    func fittedToSchema() -> GenericResultFile {
        var fitted = self
        fitted.error = Fit.nullableText(error, SchemaLimits.message)
        fitted.runner_version = Fit.text(runner_version, SchemaLimits.shortText, fallback: "unknown")
        fitted.started_at = Fit.text(started_at, SchemaLimits.shortText, fallback: "unknown")
        fitted.finished_at = Fit.nullableText(finished_at, SchemaLimits.shortText)
        fitted.device.model_identifier = Fit.text(device.model_identifier, SchemaLimits.shortText)
        fitted.device.os_version = Fit.text(device.os_version, SchemaLimits.shortText)
        fitted.device.os_build = Fit.text(device.os_build, SchemaLimits.shortText)
        fitted.device.battery_level = Fit.unit(device.battery_level)
        fitted.compiles = compiles.map { record in
            var record = record
            record.error = Fit.nullableText(record.error, SchemaLimits.message)
            return record
        }
        fitted.steps = steps.map { $0.fittedToSchema() }
        return fitted
    }
}

extension GenericStepRecord {
    func fittedToSchema() -> GenericStepRecord {
        var fitted = self
        fitted.error = Fit.nullableText(error, SchemaLimits.message)
        fitted.compute_plan_error = Fit.nullableText(compute_plan_error, SchemaLimits.message)
        fitted.outputs_error = Fit.nullableText(outputs_error, SchemaLimits.message)
        if var plan = compute_plan {
            plan.model = plan.model.map { $0.fittedToSchema() }
            fitted.compute_plan = plan
        }
        return fitted
    }
}
