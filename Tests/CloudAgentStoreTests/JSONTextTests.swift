import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSQLite
import Foundation
import Testing

/// The direct JSON writer gives the text `JSONEncoder` (sorted keys, unescaped slashes) gives,
/// and what it writes reads back as the same value.
@Suite("Store: JSON text")
struct JSONTextTests {
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    static let samples: [JSONValue] = [
        .null, true, false, 0, -1, 42, 1_700_000_000_123, .number(0.5), .number(-3.25), .number(1e-7), .number(123456.789),
        "", "plain", "a/b", "quote \" and backslash \\", "tab\tnew\nline\rcr", "bell \u{07} nul \u{00} us \u{1F}", "é 日本 🚀",
        [], [1, "two", nil, [3]], [:],
        ["z": 1, "a": ["nested": [true, "x"]], "m": nil, "kind": "text", "text": "benchmark event"],
        ["seq": 12, "data": ["raw": ["type": "assistant", "message": "{\"json\": \"inside\"}"]]],
    ]

    @Test("the same text as JSONEncoder", arguments: samples)
    func sameTextAsJSONEncoder(_ value: JSONValue) throws {
        let expected = String(decoding: try Self.encoder.encode(value), as: UTF8.self)
        #expect(JSONText.encode(value) == expected)
    }

    @Test("reads back as the same value", arguments: samples)
    func roundTrips(_ value: JSONValue) throws {
        let decoded = try JSONDecoder().decode(JSONValue.self, from: Data(JSONText.encode(value).utf8))
        #expect(decoded == value)
    }

    @Test func objectsAsEventData() throws {
        let data: [String: JSONValue] = ["kind": "tool", "name": "bash", "input": ["command": "ls /tmp"], "ok": true]
        let expected = String(decoding: try Self.encoder.encode(data), as: UTF8.self)
        #expect(JSONText.encode(data) == expected)
    }
}
