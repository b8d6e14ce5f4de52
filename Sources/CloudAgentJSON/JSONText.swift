import Foundation

/// JSON text for `JSONValue`, written directly: the same text as a `JSONEncoder` with sorted keys
/// and unescaped slashes (integral numbers without a fraction), several times faster than going
/// through `Codable`. Event data is written with it on every ingested event, and every live
/// event is written once for all of a session's stream subscribers.
public enum JSONText {
    public static func encode(_ value: JSONValue) -> String {
        var out = ""
        out.reserveCapacity(128)
        write(value, into: &out)
        return out
    }

    public static func encode(_ object: [String: JSONValue]) -> String {
        var out = ""
        out.reserveCapacity(128)
        write(object, into: &out)
        return out
    }

    /// Reads one JSON value.
    public static func decode(_ data: Data) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: data)
    }

    public static func write(_ value: JSONValue, into out: inout String) {
        switch value {
        case .null: out += "null"
        case .bool(let flag): out += flag ? "true" : "false"
        case .number(let number): write(number: number, into: &out)
        case .string(let text): write(string: text, into: &out)
        case .array(let items):
            out += "["
            for (index, item) in items.enumerated() {
                if index > 0 { out += "," }
                write(item, into: &out)
            }
            out += "]"
        case .object(let object): write(object, into: &out)
        }
    }

    public static func write(_ object: [String: JSONValue], into out: inout String) {
        out += "{"
        var first = true
        for key in object.keys.sorted() {
            if !first { out += "," }
            first = false
            write(string: key, into: &out)
            out += ":"
            write(object[key]!, into: &out)
        }
        out += "}"
    }

    /// A number as `JSONEncoder` writes it: integral ones without a fraction (`3`, `9000000000000000`,
    /// `1e+16`), others as their shortest description (`0.5`, `1e-07`); NaN and the infinities,
    /// which JSON lacks, as null (`JSONValue` never holds one from parsed text).
    public static func write(number: Double, into out: inout String) {
        if number.rounded() == number, abs(number) < 9.0e15 {
            out += String(Int64(number))
        } else if number.isFinite {
            let text = number.description
            // Integral doubles from 9e15 up to 1e16 are described with a fraction (`.0`).
            out += text.hasSuffix(".0") ? text.dropLast(2) : Substring(text)
        } else {
            out += "null"
        }
    }

    private static let hex: [Character] = Array("0123456789abcdef")

    /// A string in quotes, escaping only what JSON requires: the quote, the backslash and the
    /// control characters (`\n`, `\r`, `\t`, `\b`, `\f`, the others as `\u00xx`). Non-ASCII text
    /// and `/` are written as they are.
    public static func write(string text: String, into out: inout String) {
        out += "\""
        // Fast path: nothing to escape.
        if !text.utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }) {
            out += text
        } else {
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                case "\u{08}": out += "\\b"
                case "\u{0C}": out += "\\f"
                case _ where scalar.value < 0x20:
                    out += "\\u00"
                    out.append(hex[Int(scalar.value >> 4)])
                    out.append(hex[Int(scalar.value & 0xF)])
                default: out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}
