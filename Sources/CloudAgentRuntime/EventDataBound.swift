import CloudAgentProtocol

/// Keeps every event within a frame (`RuntimeProtocol.maxFrameBytes`), whatever an agent sends:
/// a frame the control plane refuses would be resent after every reconnect, for ever.
/// `EventOutbox.append` calls it for a frame found too large.
///
/// Events are small by construction (lines cut at 64 KiB, texts at 32 Ki characters, tool
/// output tails, `raw` cut at 16 Ki characters); this is the net under all of them. An event
/// whose strings come to more than `limitBytes` has each string cut to `cutCharacters` and each
/// array to `cutElements`, and says `truncated: true`; one still too large keeps only its kind
/// and a message saying so. The size is counted, not encoded: JSON escaping can make a string at
/// most six times longer, which `limitBytes` leaves room for.
enum EventDataBound {
    static let limitBytes = 128 * 1024
    static let cutCharacters = 8 * 1024
    static let cutElements = 64

    static func bounded(_ data: [String: JSONValue]) -> [String: JSONValue] {
        let size = data.reduce(0) { $0 + $1.key.utf8.count + bytes(of: $1.value) }
        guard size > limitBytes else { return data }
        var cut = data.mapValues(shrink)
        cut["truncated"] = true
        guard cut.reduce(0, { $0 + $1.key.utf8.count + bytes(of: $1.value) }) > limitBytes else { return cut }
        var minimal: [String: JSONValue] = [
            "message": .string("an event of about \(size) bytes was too large to keep"), "truncated": true,
        ]
        if let kind = data["kind"] { minimal["kind"] = kind }
        if let stream = data["stream"] { minimal["stream"] = stream }
        if data["line"] != nil { minimal["line"] = .string("(a line of about \(size) bytes was too large to keep)") }
        return minimal
    }

    /// The bytes of the strings and scalars in `value` (its JSON length, before escaping).
    static func bytes(of value: JSONValue) -> Int {
        switch value {
        case .null, .bool, .number: 8
        case .string(let text): text.utf8.count + 2
        case .array(let items): items.reduce(2) { $0 + bytes(of: $1) + 1 }
        case .object(let members): members.reduce(2) { $0 + $1.key.utf8.count + 4 + bytes(of: $1.value) }
        }
    }

    static func shrink(_ value: JSONValue) -> JSONValue {
        switch value {
        case .string(let text) where text.count > cutCharacters:
            .string(String(text.prefix(cutCharacters)) + "…")
        case .array(let items):
            .array(items.prefix(cutElements).map(shrink))
        case .object(let members):
            .object(members.mapValues(shrink))
        default:
            value
        }
    }
}
