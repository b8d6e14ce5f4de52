import Foundation

/// JSON for stored records (the session record, callback headers, outbox commands), as every
/// store writes it: timestamps as milliseconds since 1970, keys sorted (stable bytes), so that one
/// store's records read the same in another.
public enum RecordCoding {
    // Both are safe to share: configured once, never changed.
    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .millisecondsSince1970
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    private static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return decoder
    }()

    public static func encode(_ value: some Encodable) throws -> String {
        String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from text: String) throws -> T {
        try decoder.decode(type, from: Data(text.utf8))
    }
}

/// A change's stored text (the record, event data, callback headers, outbox commands), encoded
/// once, where it can be before the store takes its write lock.
public struct EncodedChange: Sendable {
    public var session: String?
    public var eventData: [String]
    public var callbackHeaders: [String]
    public var commands: [String]

    public init(_ change: SessionChange) throws {
        session = try change.session.map { try RecordCoding.encode($0) }
        eventData = change.events.map { $0.encodedData ?? JSONText.encode($0.data) }
        callbackHeaders = try change.callbacks.map { try RecordCoding.encode($0.headers) }
        commands = try change.commands.map { try RecordCoding.encode($0) }
    }
}
