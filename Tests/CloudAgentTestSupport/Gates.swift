import Foundation
import Testing

/// How many tests of one kind run at once. The suite runs in parallel (`swift test`), and most
/// of it — the pure core, the reducers, the protocol, the parsers — runs unbounded. A few kinds
/// of test hold something scarce on a small machine: a real control plane with real runtime
/// processes in bubblewrap, a database in the shared PostgreSQL cluster, a real agent CLI.
/// Each such test holds a permit of its kind's gate while it runs, so that two cores are
/// shared by a few of them at a time, not by a hundred, and their deadlines (a stop within
/// 1 s of its deadline) keep their meaning. A test that measures real time against a tight
/// bound takes every permit (`.alone`). Waiting for a permit is a suspension, not a thread.
public actor TestGate {
    public let width: Int
    private var inUse = 0
    private var queue: [(weight: Int, continuation: CheckedContinuation<Void, Never>)] = []

    public init(width: Int) { self.width = max(1, width) }

    /// Waits (in arrival order) until `weight` permits are free, and takes them.
    public func acquire(_ weight: Int) async {
        let weight = min(weight, width)
        if queue.isEmpty, inUse + weight <= width {
            inUse += weight
            return
        }
        await withCheckedContinuation { queue.append((weight, $0)) }
    }

    public func release(_ weight: Int) {
        inUse -= min(weight, width)
        // First come, first served: a wide waiter at the head is not overtaken by narrow ones.
        while let head = queue.first, inUse + head.weight <= width {
            queue.removeFirst()
            inUse += head.weight
            head.continuation.resume()
        }
    }

    /// Runs `body` holding `weight` permits.
    nonisolated(nonsending) public func withPermits<T>(_ weight: Int, _ body: () async throws -> T) async rethrows -> T {
        await acquire(weight)
        do {
            let value = try await body()
            await release(weight)
            return value
        } catch {
            await release(weight)
            throw error
        }
    }

    /// Tests that run real processes: a control plane, runtimes, agents, git, bubblewrap.
    /// `CLOUD_AGENT_TEST_PROCESSES` sets the width; by default one more than the cores.
    public static let processes = TestGate(width: widthSetting("CLOUD_AGENT_TEST_PROCESSES", default: ProcessInfo.processInfo.activeProcessorCount + 1))

    /// Tests that each create a database in the shared throwaway PostgreSQL cluster.
    public static let databases = TestGate(width: widthSetting("CLOUD_AGENT_TEST_DATABASES", default: 4))

    static func widthSetting(_ name: String, default value: Int) -> Int {
        ProcessInfo.processInfo.environment[name].flatMap(Int.init).map { max(1, $0) } ?? max(2, value)
    }
}

/// The trait that makes a test (or every test of a suite) hold permits of a gate while it runs.
public struct GateTrait: TestTrait, SuiteTrait, TestScoping {
    let gate: TestGate
    /// Permits held; `Int.max` for all of them.
    let weight: Int
    let kind: String

    public var isRecursive: Bool { true }

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        // Suites are not gated, only the test cases they run; and a test marked by its suite
        // and by itself holds one set of permits, the widest it is marked with.
        guard testCase != nil, !test.isSuite, !GateTrait.holding.contains(ObjectIdentifier(gate)) else { return try await function() }
        let widest = test.traits.compactMap { $0 as? GateTrait }.filter { $0.gate === gate }.map(\.weight).max() ?? weight
        guard weight == widest else { return try await function() }
        try await gate.withPermits(weight) {
            try await GateTrait.$holding.withValue(GateTrait.holding.union([ObjectIdentifier(gate)])) { try await function() }
        }
    }

    /// The gates whose permits the current task holds.
    @TaskLocal static var holding: Set<ObjectIdentifier> = []
}

extension Trait where Self == GateTrait {
    /// Runs real processes (a control plane with runtimes, agents, git, bubblewrap): at most a
    /// few such tests at once.
    public static var processes: Self { GateTrait(gate: .processes, weight: 1, kind: "processes") }

    /// Measures real time against a tight bound with real processes: runs while no other test
    /// of real processes runs.
    public static var alone: Self { GateTrait(gate: .processes, weight: .max, kind: "alone") }

    /// Creates a database in the shared PostgreSQL cluster.
    public static var database: Self { GateTrait(gate: .databases, weight: 1, kind: "database") }
}
