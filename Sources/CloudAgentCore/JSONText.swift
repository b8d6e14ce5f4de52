/// A direct JSON writer for `JSONValue`: the same text as a `JSONEncoder` with sorted keys and
/// unescaped slashes (integral numbers without a fraction), several times faster than going
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

    public static func write(_ value: JSONValue, into out: inout String) {
        switch value {
        case .null: out += "null"
        case .bool(let flag): out += flag ? "true" : "false"
        case .number(let number): write(number, into: &out)
        case .string(let text): write(text, into: &out)
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
            write(key, into: &out)
            out += ":"
            write(object[key]!, into: &out)
        }
        out += "}"
    }

    static func write(_ number: Double, into out: inout String) {
        if number.rounded() == number, abs(number) < 9.0e15 {
            out += String(Int64(number))
        } else if number.isFinite {
            out += "\(number)"
        } else {
            out += "null"  // JSON has no NaN or infinity; JSONValue never holds one from parsed text.
        }
    }

    private static let hex: [Character] = Array("0123456789abcdef")

    static func write(_ text: String, into out: inout String) {
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
