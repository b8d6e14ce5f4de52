/// The end of a command's output, kept in bounded memory while the command runs, and turned into
/// the redacted text that may be stored or returned (`SetupFailure.outputTail`).
struct OutputTail: Sendable {
    /// Longest text `text(redacting:note:)` returns, in UTF-8 bytes.
    static let limit = 4096

    /// How many raw bytes are kept: enough that after redaction (which may shorten the text)
    /// and after dropping a possible partial secret at the front, `limit` bytes usually remain.
    let capacity: Int
    private var bytes: [UInt8] = []
    /// Whether bytes were dropped from the front (so the first kept bytes may be the end of a
    /// secret whose start is gone).
    private(set) var droppedFront = false

    init(capacity: Int = 4 * OutputTail.limit) {
        self.capacity = capacity
    }

    mutating func append(_ chunk: some Collection<UInt8>) {
        bytes.append(contentsOf: chunk)
        if bytes.count > 2 * capacity {
            compact()
        }
    }

    mutating func append(_ text: String) {
        append(Array(text.utf8))
    }

    private mutating func compact() {
        guard bytes.count > capacity else { return }
        bytes.removeFirst(bytes.count - capacity)
        droppedFront = true
    }

    /// The redacted tail: every secret replaced by `***`, at most `limit` UTF-8 bytes including
    /// `note` (appended on its own line when given).
    func text(redacting secrets: [String], note: String? = nil) -> String {
        var copy = self
        copy.compact()
        let secretBytes = secrets.filter { !$0.isEmpty }.map { Array($0.utf8) }.sorted { $0.count > $1.count }
        var redacted = Redaction.redact(copy.bytes, secrets: secretBytes)
        if copy.droppedFront, let longest = secretBytes.first?.count, longest > 1 {
            // The front may hold the end of a secret whose beginning was dropped: no match
            // can find it, so drop as many bytes as such a fragment could have.
            redacted.removeFirst(min(redacted.count, longest - 1))
        }
        let suffix = note.map { (redacted.isEmpty ? "" : "\n") + $0 } ?? ""
        let budget = max(0, Self.limit - suffix.utf8.count)
        if redacted.count > budget {
            redacted.removeFirst(redacted.count - budget)
        }
        // Do not start in the middle of a UTF-8 sequence.
        while let first = redacted.first, first & 0b1100_0000 == 0b1000_0000 {
            redacted.removeFirst()
        }
        var text = String(decoding: redacted, as: UTF8.self) + suffix
        // Invalid input decodes to U+FFFD (3 bytes), which may grow the text past the limit.
        while text.utf8.count > Self.limit, !text.isEmpty {
            text.removeFirst()
        }
        return text
    }
}

/// Replaces secret values by `***` in text that is logged, stored or returned.
enum Redaction {
    static let mask = "***"

    static func redact(_ text: String, secrets: [String]) -> String {
        let secretBytes = secrets.filter { !$0.isEmpty }.map { Array($0.utf8) }.sorted { $0.count > $1.count }
        guard !secretBytes.isEmpty else { return text }
        return String(decoding: redact(Array(text.utf8), secrets: secretBytes), as: UTF8.self)
    }

    /// Byte-exact replacement; `secrets` longest first, so that a secret containing another
    /// is masked whole.
    static func redact(_ input: [UInt8], secrets: [[UInt8]]) -> [UInt8] {
        var text = input
        let mask = Array(Self.mask.utf8)
        for secret in secrets where !secret.isEmpty && secret.count <= text.count {
            var output: [UInt8] = []
            output.reserveCapacity(text.count)
            var index = 0
            var found = false
            while index < text.count {
                if text[index] == secret[0], index + secret.count <= text.count,
                    text[index..<(index + secret.count)].elementsEqual(secret)
                {
                    output.append(contentsOf: mask)
                    index += secret.count
                    found = true
                } else {
                    output.append(text[index])
                    index += 1
                }
            }
            if found { text = output }
        }
        return text
    }
}
