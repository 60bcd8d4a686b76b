import CoreML
import Foundation

/// Per-operation device placement and Core ML's *estimated* cost (iOS 17.4+). Costs are estimates from
/// MLComputePlan, never measurements; Core ML may report nil costs for models with an old deployment target.
@available(iOS 17.4, *)
enum ComputePlanReader {
    /// `function`: which function of the program (multi-function packages); captioner packages have only "main".
    static func read(compiledModel url: URL, computeUnits: MLComputeUnits, function: String = "main") async throws -> [OpRecord] {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        let plan = try await MLComputePlan.load(contentsOf: url, configuration: configuration)
        guard case let .program(program) = plan.modelStructure else {
            return []
        }
        guard let main = program.functions[function] else {
            return []
        }
        var records: [OpRecord] = []
        collect(main.block, plan: plan, into: &records)
        return records
    }

    /// Walks a block and its nested blocks (loops, conditionals) in program order.
    private static func collect(_ block: MLModelStructure.Program.Block, plan: MLComputePlan, into records: inout [OpRecord]) {
        for operation in block.operations {
            let usage = plan.deviceUsage(for: operation)
            let cost = plan.estimatedCost(of: operation)
            records.append(OpRecord(
                name: operation.outputs.first?.name ?? "",
                type: operation.operatorName,
                preferred: usage.map { deviceName($0.preferred) },
                supported: usage.map { $0.supported.map(deviceName) } ?? [],
                cost: cost?.weight
            ))
            for nested in operation.blocks {
                collect(nested, plan: plan, into: &records)
            }
        }
    }

    private static func deviceName(_ device: MLComputeDevice) -> String {
        switch device {
        case .cpu: return "cpu"
        case .gpu: return "gpu"
        case .neuralEngine: return "neuralEngine"
        @unknown default: return "unknown"
        }
    }
}
