import CloudAgentJSON
import Foundation
import Testing

/// `JSONText`: its escaping, character by character, and the same text as a `JSONEncoder` with
/// sorted keys and unescaped slashes, for any value.
@Suite("JSON: the text writer")
struct JSONTextWriterTests {
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    static func foundation(_ value: JSONValue) throws -> String { String(decoding: try encoder.encode(value), as: UTF8.self) }

    /// Every control character, as JSON escapes it.
    static let controls: [(Unicode.Scalar, String)] = (0..<0x20).map { code in
        let scalar = Unicode.Scalar(UInt8(code))
        let escaped =
            switch code {
            case 0x08: #"\b"#
            case 0x09: #"\t"#
            case 0x0A: #"\n"#
            case 0x0C: #"\f"#
            case 0x0D: #"\r"#
            default: #"\u00"# + (code < 0x10 ? "0" : "") + String(code, radix: 16)
            }
        return (scalar, escaped)
    }

    @Test(
        "quotes, backslashes and control characters are escaped; the rest is written as it is",
        arguments: [
            ("plain", #""plain""#), ("", #""""#), (#"say "hi""#, #""say \"hi\"""#), (#"C:\dir\"#, #""C:\\dir\\""#),
            ("two\nlines", #""two\nlines""#), ("cr\r tab\t", #""cr\r tab\t""#), ("bell \u{07} nul \u{00}", #""bell \u0007 nul \u0000""#),
            ("esc \u{1B}[0m", #""esc \u001b[0m""#), ("\u{08}\u{0C}", #""\b\f""#), ("a/b </script>", #""a/b </script>""#),
            ("del \u{7F}", "\"del \u{7F}\""), ("é 日本 🚀 \u{2028}\u{2029}", "\"é 日本 🚀 \u{2028}\u{2029}\""),
            ("é\n🚀 \"q\"", #""é\n🚀 \"q\"""#), ("e\u{301}", "\"e\u{301}\""),
        ])
    func escapes(_ text: String, _ expected: String) throws {
        #expect(JSONText.encode(.string(text)) == expected)
        #expect(try Self.foundation(.string(text)) == expected)
    }

    @Test func everyControlCharacter() throws {
        for (scalar, escaped) in Self.controls {
            let text = "a" + String(Character(scalar)) + "b"
            #expect(JSONText.encode(.string(text)) == "\"a" + escaped + "b\"", "U+\(String(scalar.value, radix: 16))")
            #expect(try Self.foundation(.string(text)) == "\"a" + escaped + "b\"", "U+\(String(scalar.value, radix: 16))")
        }
        let all = String(String.UnicodeScalarView(Self.controls.map(\.0)))
        #expect(JSONText.encode(.string(all)) == "\"" + Self.controls.map(\.1).joined() + "\"")
    }

    @Test func writesIntoAString() {
        var out = "data: "
        JSONText.write(["b": [1, .number(0.5)], "a": "x"], into: &out)
        out += " "
        JSONText.write(.null, into: &out)
        out += " "
        JSONText.write(number: 7, into: &out)
        out += " "
        JSONText.write(string: "\"", into: &out)
        #expect(out == #"data: {"a":"x","b":[1,0.5]} null 7 "\"""#)
    }

    @Test func numbersJSONLacksAreNull() {
        #expect(JSONText.encode(.number(.nan)) == "null")
        #expect(JSONText.encode([.number(.infinity), .number(-.infinity)]) == "[null,null]")
    }

    @Test func objectKeysAreSortedAndEscaped() {
        let object: [String: JSONValue] = ["b": 1, "a10": 2, "a2": 3, "B": 4, "é": 5, "_": 6, "quote\"": 7, "line\n": 8]
        let expected = #"{"B":4,"_":6,"a10":2,"a2":3,"b":1,"line\n":8,"quote\"":7,"é":5}"#
        #expect(JSONText.encode(object) == expected)
        #expect(JSONText.encode(.object(object)) == expected)
    }

    static let samples: [JSONValue] = {
        var samples: [JSONValue] = [
            .null, true, false, 0, -1, 42, 1_700_000_000_123, .number(-0.0), .number(0.5), .number(-3.25), .number(1e-7), .number(2e-5),
            .number(123456.789), .number(0.1), .number(1.0 / 3.0), .number(8_999_999_999_999_999), .number(9e15), .number(-9e15),
            .number(9_007_199_254_740_992), .number(9.5e15), .number(1e16), .number(1e21), .number(1e300), .number(-1.7976931348623157e308),
            .number(.leastNonzeroMagnitude), "", "plain", "a/b", "quote \" and backslash \\", "tab\tnew\nline\rcr", "bell \u{07} nul \u{00} us \u{1F}",
            "é 日本 🚀", "del \u{7F} ls \u{2028} ps \u{2029} bom \u{FEFF}", "e\u{301} vs \u{E9}", [], [1, "two", nil, [3]], [:],
            ["z": 1, "a": ["nested": [true, "x"]], "m": nil, "kind": "text", "text": "benchmark event"],
            ["seq": 12, "data": ["raw": ["type": "assistant", "message": "{\"json\": \"inside\"}"]]],
            ["b": 1, "a10": 2, "a2": 3, "B": 4, "é": 5, "_": 6, "Ä": 7, "ß": 8, "🚀": 9, "1": 10, "ｚ": 11, "/": 12, "\u{1}": 13],
        ]
        samples.append(.string(String(String.UnicodeScalarView(controls.map(\.0)))))
        samples.append(.array(samples))
        samples.append(.object(Dictionary(uniqueKeysWithValues: samples.enumerated().map { ("k\($0.offset)", $0.element) })))
        return samples
    }()

    @Test("the same text as JSONEncoder (sorted keys, unescaped slashes)", arguments: samples)
    func sameTextAsJSONEncoder(_ value: JSONValue) throws {
        #expect(JSONText.encode(value) == (try Self.foundation(value)))
        if case .object(let object) = value { #expect(JSONText.encode(object) == (try Self.foundation(value))) }
    }

    @Test("reads back as the same value", arguments: samples)
    func readsBack(_ value: JSONValue) throws {
        #expect(try JSONText.decode(Data(JSONText.encode(value).utf8)) == value)
    }
}
