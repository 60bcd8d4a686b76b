import CoreML
import Foundation

enum MeasureError: LocalizedError {
    case inputSize(String, expected: Int, found: Int)
    case missingOutput(String)
    case badLogits(String)
    case badDecoderLength(Int)
    case noInputs(String)
    case needsIOS18(String)

    var errorDescription: String? {
        switch self {
        case .inputSize(let path, let expected, let found):
            return "\(path): \(found) bytes, expected \(expected) (little-endian float32 of the job's shape)"
        case .missingOutput(let name):
            return "the model has no output named \(name) (set the job's io names to match the exported model)"
        case .badLogits(let reason):
            return "unexpected logits: \(reason)"
        case .badDecoderLength(let length):
            return "decoder input_ids length \(length) is too short for greedy decoding"
        case .noInputs(let variant):
            return "model \(variant) has no inputs to measure"
        case .needsIOS18(let variant):
            return "model \(variant) decodes with a kv_cache in Core ML state, which needs iOS 18 or later"
        }
    }
}

/// Element offsets in an MLMultiArray's storage. Core ML may hand back arrays whose storage is not contiguous
/// (padded rows, e.g. when backed by a pixel buffer), so every read and write goes through `strides`.
enum Strided {
    /// Storage offset of the element at `index` (one entry per axis).
    static func offset(_ index: [Int], strides: [Int]) -> Int {
        zip(index, strides).reduce(0) { total, pair in total + pair.0 * pair.1 }
    }

    /// The strides of a dense C-order array of `shape`.
    static func contiguous(_ shape: [Int]) -> [Int] {
        var strides = Array(repeating: 1, count: shape.count)
        var step = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[axis] = step
            step *= shape[axis]
        }
        return strides
    }
}

/// Reads a preprocessed image (inputs/<sha>.f32: little-endian float32, C order, shape from the job).
enum PixelInput {
    static func load(_ url: URL, shape: [Int]) throws -> MLMultiArray {
        let data = try Data(contentsOf: url)
        let count = shape.reduce(1, *)
        guard data.count == count * MemoryLayout<Float32>.size else {
            throw MeasureError.inputSize(url.lastPathComponent, expected: count * MemoryLayout<Float32>.size, found: data.count)
        }
        let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float32)
        // Copied out of `data` first: its bytes need not be aligned for Float32 (iOS is little-endian, like the file).
        var values = [Float32](repeating: 0, count: count)
        _ = values.withUnsafeMutableBytes { data.copyBytes(to: $0) }
        let dense = Strided.contiguous(shape)
        array.withUnsafeMutableBufferPointer(ofType: Float32.self) { destination, strides in
            if strides == dense {
                _ = destination.update(from: values)  // same layout: one copy
                return
            }
            // Padded storage: place each element at its strided offset (outside any timed region).
            for flat in 0..<count {
                var rest = flat
                var index = Array(repeating: 0, count: shape.count)
                for axis in 0..<shape.count {
                    index[axis] = rest / dense[axis]
                    rest %= dense[axis]
                }
                destination[Strided.offset(index, strides: strides)] = values[flat]
            }
        }
        return array
    }
}

/// The inputs of one model for one step. Preloaded when they fit in `preloadLimitBytes` (the usual case);
/// otherwise each is read just before its sample, still outside the timed region. Nothing is kept across
/// steps, so memory stays bounded by one model's inputs.
final class StepInputs {
    static let preloadLimitBytes = 128 * 1024 * 1024
    private let items: [(imageId: String, url: URL, shape: [Int])]
    private var preloaded: [MLMultiArray]?

    init(model: JobModel, paths: ContainerPaths) throws {
        var items: [(imageId: String, url: URL, shape: [Int])] = []
        for input in model.inputs {
            items.append((imageId: input.image_id, url: try paths.resolve(input.path), shape: input.shape))
        }
        guard !items.isEmpty else {
            throw MeasureError.noInputs(model.variant_id)
        }
        self.items = items
        let bytes = items.reduce(0) { total, item in total + item.shape.reduce(MemoryLayout<Float32>.size, *) }
        if bytes <= Self.preloadLimitBytes {
            var loaded: [MLMultiArray] = []
            for item in items {
                loaded.append(try PixelInput.load(item.url, shape: item.shape))
            }
            preloaded = loaded
        }
    }

    var count: Int {
        items.count
    }

    func imageId(_ index: Int) -> String {
        items[index].imageId
    }

    func pixels(_ index: Int) throws -> MLMultiArray {
        if let loaded = preloaded {
            return loaded[index]
        }
        return try PixelInput.load(items[index].url, shape: items[index].shape)
    }
}

/// One timed caption: encoder once, then greedy decoding one decoder call per token.
struct CaptionTiming {
    var encoderNs: UInt64
    var decoderNs: [UInt64]
    var totalNs: UInt64
    var tokens: [Int]
    /// kv_cache decoding only: making the caption's MLState (included in totalNs).
    var stateNs: UInt64? = nil
}

/// A loaded encoder/decoder pair and the greedy decoding loop the host reproduces in PyTorch.
final class Captioner {
    let encoder: MLModel
    let decoder: MLModel
    let names: ResolvedFeatureNames
    let decode: DecodeSettings
    let decoderLength: Int
    /// The job's `decoding` is "kv_cache": one MLState per caption, one token per step (cachedCaption).
    let cached: Bool
    private let idsType: MLMultiArrayDataType
    private let positionType: MLMultiArrayDataType

    init(encoder: MLModel, decoder: MLModel, model: JobModel) throws {
        let names = ResolvedFeatureNames(model.io)
        self.encoder = encoder
        self.decoder = decoder
        self.names = names
        self.decode = model.decode
        self.cached = model.decoding == "kv_cache"
        if cached {
            guard #available(iOS 18.0, *) else {
                throw MeasureError.needsIOS18(model.variant_id)
            }
        }
        let positionConstraint = decoder.modelDescription.inputDescriptionsByName[names.decoderPosition]?.multiArrayConstraint
        self.positionType = positionConstraint?.dataType ?? .int32
        let constraint = decoder.modelDescription.inputDescriptionsByName[names.decoderInputIds]?.multiArrayConstraint
        // The decoder was exported with fixed-length input_ids: the job may say how long, else the model does.
        let modelLength = constraint?.shape.last?.intValue ?? 0
        let length = model.decoder_length ?? (modelLength > 0 ? modelLength : model.decode.max_length)
        guard length >= 2 else {
            throw MeasureError.badDecoderLength(length)
        }
        self.decoderLength = length
        self.idsType = constraint?.dataType ?? .int32
    }

    func caption(_ pixels: MLMultiArray) throws -> CaptionTiming {
        if cached, #available(iOS 18.0, *) {
            return try cachedCaption(pixels)
        }
        let start = Monotonic.now()
        let encoderInput = try MLDictionaryFeatureProvider(
            dictionary: [names.encoderInput: MLFeatureValue(multiArray: pixels)])
        let encoderStart = Monotonic.now()
        let encoded = try encoder.prediction(from: encoderInput)
        let encoderNs = Monotonic.elapsed(since: encoderStart)
        guard let embeds = encoded.featureValue(for: names.encoderOutput)?.multiArrayValue else {
            throw MeasureError.missingOutput(names.encoderOutput)
        }

        // Written by (row, column) key, never by linear index: the key subscript honours the array's strides.
        let ids = try MLMultiArray(shape: [1, NSNumber(value: decoderLength)], dataType: idsType)
        for index in 0..<decoderLength {
            ids[Self.position(index)] = NSNumber(value: decode.pad_id)
        }
        ids[Self.position(0)] = NSNumber(value: decode.bos_id)
        // The builder's decoder step also takes an attention mask over the filled positions; feed it when declared.
        let maskDescription = decoder.modelDescription.inputDescriptionsByName[names.decoderAttentionMask]
        var mask: MLMultiArray? = nil
        if maskDescription != nil {
            let maskType = maskDescription?.multiArrayConstraint?.dataType ?? idsType
            let created = try MLMultiArray(shape: [1, NSNumber(value: decoderLength)], dataType: maskType)
            for index in 0..<decoderLength {
                created[Self.position(index)] = NSNumber(value: index == 0 ? 1 : 0)
            }
            mask = created
        }

        // Sequence = bos + generated tokens; like Hugging Face generate, max_length counts the bos token.
        let limit = min(decode.max_length, decoderLength)
        var tokens: [Int] = []
        var decoderNs: [UInt64] = []
        while true {
            let position = tokens.count  // index of the last token in ids
            var features: [String: MLFeatureValue] = [
                names.decoderInputIds: MLFeatureValue(multiArray: ids),
                names.decoderImageEmbeds: MLFeatureValue(multiArray: embeds),
            ]
            if let mask = mask {
                features[names.decoderAttentionMask] = MLFeatureValue(multiArray: mask)
            }
            let decoderInput = try MLDictionaryFeatureProvider(dictionary: features)
            let stepStart = Monotonic.now()
            let output = try decoder.prediction(from: decoderInput)
            decoderNs.append(Monotonic.elapsed(since: stepStart))
            guard let logits = output.featureValue(for: names.decoderOutput)?.multiArrayValue else {
                throw MeasureError.missingOutput(names.decoderOutput)
            }
            let next = try Self.argmax(logits, position: position)
            tokens.append(next)
            if next == decode.eos_id || tokens.count + 1 >= limit {
                break
            }
            ids[Self.position(tokens.count)] = NSNumber(value: next)
            mask?[Self.position(tokens.count)] = NSNumber(value: 1)
        }
        return CaptionTiming(
            encoderNs: encoderNs, decoderNs: decoderNs, totalNs: Monotonic.elapsed(since: start), tokens: tokens)
    }

    /// kv_cache decoding (iOS 18): the encoder gives the image's cross-attention keys/values once; a new MLState per
    /// caption holds the self-attention cache (zeros: nothing leaks from the previous caption); step t feeds token
    /// t (t = 0: bos) at position t with the same cross keys/values and reads logits[0, 0]. The state's slots are
    /// the job's decoder_length (the contract requires it for kv_cache).
    @available(iOS 18.0, *)
    private func cachedCaption(_ pixels: MLMultiArray) throws -> CaptionTiming {
        let start = Monotonic.now()
        let encoderInput = try MLDictionaryFeatureProvider(
            dictionary: [names.encoderInput: MLFeatureValue(multiArray: pixels)])
        let encoderStart = Monotonic.now()
        let encoded = try encoder.prediction(from: encoderInput)
        let encoderNs = Monotonic.elapsed(since: encoderStart)
        var features: [String: MLFeatureValue] = [:]
        for name in [names.crossKeys, names.crossValues] {
            guard let value = encoded.featureValue(for: name) else {
                throw MeasureError.missingOutput(name)
            }
            features[name] = value
        }
        let stateStart = Monotonic.now()
        let state = decoder.makeState()
        let stateNs = Monotonic.elapsed(since: stateStart)
        let token = try MLMultiArray(shape: [1, 1], dataType: idsType)
        let position = try MLMultiArray(shape: [1], dataType: positionType)
        let limit = min(decode.max_length, decoderLength)
        var tokens: [Int] = []
        var decoderNs: [UInt64] = []
        var current = decode.bos_id
        while true {
            token[Self.position(0)] = NSNumber(value: current)
            position[[0] as [NSNumber]] = NSNumber(value: tokens.count)
            features[names.decoderInputIds] = MLFeatureValue(multiArray: token)
            features[names.decoderPosition] = MLFeatureValue(multiArray: position)
            let decoderInput = try MLDictionaryFeatureProvider(dictionary: features)
            let stepStart = Monotonic.now()
            let output = try decoder.prediction(from: decoderInput, using: state)
            decoderNs.append(Monotonic.elapsed(since: stepStart))
            guard let logits = output.featureValue(for: names.decoderOutput)?.multiArrayValue else {
                throw MeasureError.missingOutput(names.decoderOutput)
            }
            let next = try Self.argmax(logits, position: 0)
            tokens.append(next)
            if next == decode.eos_id || tokens.count + 1 >= limit {
                break
            }
            current = next
        }
        return CaptionTiming(
            encoderNs: encoderNs, decoderNs: decoderNs, totalNs: Monotonic.elapsed(since: start), tokens: tokens,
            stateNs: stateNs)
    }

    /// The key of column `index` in a [1, L] array.
    static func position(_ index: Int) -> [NSNumber] {
        [0, NSNumber(value: index)]
    }

    /// Argmax over the vocabulary at `position` for logits shaped [1, L, V], [L, V], [1, V] or [V]. Every element
    /// is addressed through the array's strides, and the last one is checked to lie inside the storage first.
    static func argmax(_ logits: MLMultiArray, position: Int) throws -> Int {
        let shape = logits.shape.map { $0.intValue }
        let strides = logits.strides.map { $0.intValue }
        guard let vocabulary = shape.last, vocabulary > 0, strides.count == shape.count else {
            throw MeasureError.badLogits("empty shape \(shape)")
        }
        var index = Array(repeating: 0, count: shape.count)  // leading (batch) axes: element 0
        if shape.count >= 2 {
            let sequenceAxis = shape.count - 2
            let row = shape[sequenceAxis] == 1 ? 0 : position
            guard row < shape[sequenceAxis] else {
                throw MeasureError.badLogits("position \(row) outside shape \(shape)")
            }
            index[sequenceAxis] = row
        }
        let base = Strided.offset(index, strides: strides)
        let step = strides[strides.count - 1]
        switch logits.dataType {
        case .float32:
            return try argmax(logits, Float32.self, base: base, stride: step, count: vocabulary)
        case .float16:
            return try argmax(logits, Float16.self, base: base, stride: step, count: vocabulary)
        case .double:
            return try argmax(logits, Double.self, base: base, stride: step, count: vocabulary)
        default:
            throw MeasureError.badLogits("unsupported data type \(logits.dataType.rawValue)")
        }
    }

    private static func argmax<Scalar: BinaryFloatingPoint & MLShapedArrayScalar>(
        _ array: MLMultiArray, _ type: Scalar.Type, base: Int, stride: Int, count: Int
    ) throws -> Int {
        try array.withUnsafeBufferPointer(ofType: Scalar.self) { (buffer: UnsafeBufferPointer<Scalar>) -> Int in
            let last = base + (count - 1) * stride
            guard base >= 0, stride > 0, last < buffer.count else {
                throw MeasureError.badLogits("strides \(array.strides) reach past the storage (\(buffer.count) elements)")
            }
            var best = 0
            var bestValue = buffer[base]
            for index in 1..<count {
                let value = buffer[base + index * stride]
                if value > bestValue {
                    best = index
                    bestValue = value
                }
            }
            return best
        }
    }
}
