/// The control-plane nodes a runtime may connect to, and which one it tries now.
///
/// Several nodes share one database, so any of them serves any runtime. When an attempt ends —
/// it failed, or the connection closed, broke or got no welcome — the next attempt goes to the
/// next node, round robin. The caller waits (`ReconnectBackoff`) only once every node has failed
/// in a row: a node that dies under a runtime is replaced within a connect's time, while a
/// cluster that is down as a whole is not hammered. With one endpoint every attempt is followed
/// by the wait, as a runtime that knew a single control plane always did.
///
/// A pure value, so that the rotation is tested without sockets; `ControlConnection` drives it.
public struct ControlEndpoints: Sendable, Equatable {
    /// Every node's runtime route, in order, each once; never empty.
    public private(set) var urls: [String]
    /// The endpoint of the current attempt, or of the next one. It may have left `urls` (a welcome
    /// named other nodes while the runtime was connected to it): the attempt after it goes to the
    /// first of `urls`.
    public private(set) var current: String
    /// Attempts that failed since the last held connection or the last wait.
    private var failuresInARow = 0

    /// A welcomed connection that ends sooner than this counts as a failed attempt: a node that
    /// welcomes and drops runtimes at once must not draw them into a loop without any wait.
    public static let heldAfter = Duration.seconds(1)

    /// Starts at the first of `urls` (which must not be empty; duplicates are dropped).
    public init(_ urls: [String]) {
        precondition(!urls.isEmpty, "a runtime needs at least one control-plane endpoint")
        self.urls = Self.unique(urls)
        current = self.urls[0]
    }

    /// What a runtime can connect to: a `ws://` or `wss://` URL.
    public static func isValid(_ url: String) -> Bool {
        url.hasPrefix("ws://") || url.hasPrefix("wss://")
    }

    /// `urls` in their order, each once.
    public static func unique(_ urls: [String]) -> [String] {
        var seen = Set<String>()
        return urls.filter { seen.insert($0).inserted }
    }

    /// The attempt on `current` ended after `lasted`; `welcomed` when the control plane had
    /// welcomed it. Moves to the next endpoint and says whether to wait before trying it.
    public mutating func attemptEnded(welcomed: Bool, lasted: Duration) -> Bool {
        if welcomed && lasted >= Self.heldAfter { failuresInARow = 0 } else { failuresInARow += 1 }
        if let index = urls.firstIndex(of: current) {
            current = urls[(index + 1) % urls.count]
        } else {
            current = urls[0]
        }
        guard urls.count > 1 else { return true }
        guard failuresInARow >= urls.count else { return false }
        failuresInARow = 0
        return true
    }

    /// The control plane named its nodes (a welcome's `controlUrls`): the valid ones replace the
    /// list, in their order; an empty or wholly invalid list changes nothing. `current` stays (the
    /// runtime is connected to it). Returns whether the list changed.
    @discardableResult
    public mutating func replace(with named: [String]) -> Bool {
        let valid = Self.unique(named.filter(Self.isValid))
        guard !valid.isEmpty, valid != urls else { return false }
        urls = valid
        return true
    }
}
