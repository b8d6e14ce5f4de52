import CloudAgentJSON
import Foundation
import Testing

/// `JSONValue`: what each kind of JSON text decodes to, how it encodes, its accessors and literals.
@Suite("JSON: the value")
struct JSONValueTests {
    static func decode(_ text: String) throws -> JSONValue { try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) }

    static func encode(_ value: JSONValue) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    @Test(
        "each kind of JSON text decodes to its case",
        arguments: [
            ("null", JSONValue.null), ("true", .bool(true)), ("false", .bool(false)), ("0", .number(0)), ("1", .number(1)),
            ("-12", .number(-12)), ("2.5", .number(2.5)), ("1e3", .number(1000)), (#""text""#, .string("text")),
            (#""a\"b\\c\nd\u00e9""#, .string("a\"b\\c\nd\u{e9}")), ("[]", .array([])), ("[1,\"x\",null]", .array([.number(1), .string("x"), .null])),
            ("{}", .object([:])), (#"{"a":{"b":[true]}}"#, .object(["a": .object(["b": .array([.bool(true)])])])),
        ])
    func decodes(_ text: String, _ expected: JSONValue) throws {
        #expect(try Self.decode(text) == expected)
    }

    @Test("text that is not JSON does not decode", arguments: ["", "nul", "{", "[1,", #"{"a" 1}"#, "'single'"])
    func refusesNonJSON(_ text: String) {
        #expect(throws: (any Error).self) { try Self.decode(text) }
    }

    @Test(
        "integral numbers encode without a fraction, others as they are",
        arguments: [
            (JSONValue.number(0), "0"), (.number(-0.0), "0"), (.number(3), "3"), (.number(-42), "-42"), (.number(1_700_000_000_123), "1700000000123"),
            (.number(8_999_999_999_999_999), "8999999999999999"), (.number(9e15), "9000000000000000"), (.number(1e16), "1e+16"),
            (.number(0.5), "0.5"), (.number(-3.25), "-3.25"), (.number(1e-7), "1e-07"),
        ])
    func encodesNumbers(_ value: JSONValue, _ expected: String) throws {
        #expect(try Self.encode(value) == expected)
        #expect(JSONText.encode(value) == expected)
    }

    @Test(
        "encoding then decoding gives the same value",
        arguments: [
            JSONValue.null, true, 0, -7, .number(0.1), .number(1e300), .number(-9.5e15), "", "line\nbreak \u{1F} \u{7F} é 🚀", [], [:],
            [1, "two", nil, [3, [4]], ["k": false]], ["z": 1, "a": ["nested": [true, "x"]], "m": nil, "/": "a/b"],
        ])
    func roundTrips(_ value: JSONValue) throws {
        #expect(try Self.decode(try Self.encode(value)) == value)
        #expect(try JSONText.decode(Data(JSONText.encode(value).utf8)) == value)
    }

    @Test func accessors() {
        let value: JSONValue = ["name": "bash", "ok": true, "count": 3, "ratio": .number(0.5), "items": [1, 2], "nothing": nil]
        #expect(value["name"]?.stringValue == "bash")
        #expect(value["ok"]?.boolValue == true)
        #expect(value["count"]?.intValue == 3)
        #expect(value["count"]?.doubleValue == 3)
        #expect(value["ratio"]?.intValue == nil)
        #expect(value["ratio"]?.doubleValue == 0.5)
        #expect(value["items"]?.arrayValue == [1, 2])
        #expect(value["nothing"]?.isNull == true)
        #expect(value["missing"] == nil)
        #expect(value.objectValue?.count == 6)
        #expect(value.arrayValue == nil)
        // An accessor of another kind gives nil, as does a member of a value that is not an object.
        #expect(value["name"]?.intValue == nil)
        #expect(value["name"]?.boolValue == nil)
        #expect(value["ok"]?.stringValue == nil)
        #expect(value["count"]?.objectValue == nil)
        #expect(value["items"]?["name"] == nil)
        #expect(JSONValue.string("x")["name"] == nil)
        #expect(JSONValue.number(9e15).intValue == nil)
        #expect(JSONValue.number(-8_999_999_999_999_999).intValue == -8_999_999_999_999_999)
        #expect(!JSONValue.bool(false).isNull)
    }

    @Test func literalsAndOptionalInitializers() {
        #expect(JSONValue(stringLiteral: "s") == .string("s"))
        let nothing: JSONValue = nil
        #expect(nothing == .null)
        // The last of repeated keys wins.
        let repeated: JSONValue = ["a": 1, "a": 2]
        #expect(repeated == .object(["a": .number(2)]))
        #expect(JSONValue(Int64(5)) == .number(5))
        #expect(JSONValue(Int64?.none) == .null)
        let text: String? = "text"
        #expect(JSONValue(text) == .string("text"))
        #expect(JSONValue(String?.none) == .null)
    }

    @Test func hashesAsItCompares() {
        let values: [JSONValue] = [["a": 1, "b": [true]], ["b": [true], "a": 1], .number(1), 1, "1", .null, nil]
        #expect(Set(values).count == 4)
    }
}
