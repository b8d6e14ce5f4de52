import Foundation

/// A session's id: `agent_<uuid>` (lower-case UUID).
public struct SessionID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: String

    public init?(rawValue: String) {
        guard rawValue.hasPrefix("agent_"),
            let uuid = UUID(uuidString: String(rawValue.dropFirst("agent_".count))),
            rawValue == "agent_" + uuid.uuidString.lowercased()
        else { return nil }
        self.rawValue = rawValue
    }

    public init(uuid: UUID = UUID()) {
        self.rawValue = "agent_" + uuid.uuidString.lowercased()
    }

    public var description: String { rawValue }

    public init(from decoder: any Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        guard let id = SessionID(rawValue: raw) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a session id: \(raw)"))
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// An execution's id: `exc_` + 12 base-32 digits of the creation time in milliseconds + 10 random
/// base-32 digits, so that ids sort by creation time (Crockford's alphabet, lower case).
public struct ExecutionID: RawRepresentable, Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    public let rawValue: String
    static let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz")

    public init?(rawValue: String) {
        guard rawValue.hasPrefix("exc_") else { return nil }
        let body = rawValue.dropFirst(4)
        guard body.count == 22, body.allSatisfy({ Self.alphabet.contains($0) }) else { return nil }
        self.rawValue = rawValue
    }

    public init(at date: Date) {
        var generator = SystemRandomNumberGenerator()
        self.init(at: date, using: &generator)
    }

    public init(at date: Date, using generator: inout some RandomNumberGenerator) {
        var millis = UInt64(max(0, date.millisecondsSince1970))
        var time = [Character](repeating: "0", count: 12)
        for index in stride(from: 11, through: 0, by: -1) {
            time[index] = Self.alphabet[Int(millis & 31)]
            millis >>= 5
        }
        let random = (0..<10).map { _ in Self.alphabet[Int(generator.next() & 31)] }
        self.rawValue = "exc_" + String(time) + String(random)
    }

    public static func < (lhs: ExecutionID, rhs: ExecutionID) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { rawValue }

    public init(from decoder: any Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        guard let id = ExecutionID(rawValue: raw) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an execution id: \(raw)"))
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// Who owns a session: the user and (optionally) the org of the token that created it.
public struct Owner: Hashable, Sendable, Codable, CustomStringConvertible {
    public var user: String
    public var org: String?

    public init(user: String, org: String? = nil) {
        self.user = user
        self.org = org
    }

    public static let local = Owner(user: "local")

    public var description: String { org.map { "\(user)@\($0)" } ?? user }
}
