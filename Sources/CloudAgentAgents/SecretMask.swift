/// Masks the session's secret values in what an agent prints, before it becomes an event: an
/// agent that echoes its environment (or a tool that prints a key) does not put the key in the
/// session's events, the stream or the API.
public struct SecretMask: Sendable {
    public static let mask = "***"
    /// Shorter values are not masked: masking a two-letter value would garble every line.
    public static let minimumLength = 4

    private let values: [String]

    /// `values` are the secrets' plain texts; the longest are masked first, so that a secret
    /// containing another is masked whole.
    public init(values: some Sequence<String>) {
        self.values = Set(values.filter { $0.count >= Self.minimumLength }).sorted { $0.count > $1.count }
    }

    public var isEmpty: Bool { values.isEmpty }

    public func apply(_ line: String) -> String {
        var masked = line
        for value in values where masked.contains(value) {
            masked = masked.replacing(value, with: Self.mask)
        }
        return masked
    }
}
