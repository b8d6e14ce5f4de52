import CloudAgentAgents
import CloudAgentProtocol
import Foundation
import Subprocess
import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The agents this runtime can run: the built-in `scripted` agent is this executable itself;
/// every other agent is described by the control plane's `launch` in the execute command.
public struct AgentCatalog: Sendable {
    /// This executable, which is also the built-in `scripted` agent (`scripted-agent`).
    public var runtimeExecutable: String

    public init(runtimeExecutable: String) {
        self.runtimeExecutable = runtimeExecutable
    }

    /// How to start `command`'s agent with the session's `environment`.
    public func invocation(for command: ExecuteCommand, environment: [String: String]) throws(AgentInvocationError) -> AgentInvocation {
        try AgentInvocations.invocation(
            for: command, runtimeExecutable: runtimeExecutable, scriptedArgument: RuntimeCommand.scriptedAgentArgument, environment: environment,
            scratchDirectory: FileManager.default.temporaryDirectory.standardizedFileURL.path
        )
    }

    /// The path of the running executable (`/proc/self/exe` on Linux).
    public static func currentExecutablePath() -> String {
        #if os(Linux)
            if let resolved = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return resolved }
        #endif
        return Bundle.main.executablePath ?? CommandLine.arguments[0]
    }
}

/// Which of the agent's output streams a line came from.
public enum AgentStream: String, Sendable {
    case stdout, stderr
}

/// How an agent process ended.
public enum AgentTermination: Sendable, Equatable {
    case exited(Int32)
    case signaled(Int32)
}

/// Signals to a whole process group.
public enum ProcessGroup {
    /// `kill(-group, signal)`; a group that is already gone is not an error.
    public static func signal(_ group: pid_t, _ signal: Int32) {
        guard group > 1 else { return }
        _ = kill(-group, signal)
    }

    /// Signals the agent's group and every process descended from its leader, wherever they
    /// are: a real agent may start tools in groups or sessions of their own (Claude Code, Codex),
    /// and an interrupt must reach them all. The runtime's own group is never signalled.
    public static func signalTree(_ leader: pid_t, _ signal: Int32) {
        guard leader > 1 else { return }
        let descendants = ProcessTree.descendants(of: leader)
        self.signal(leader, signal)
        let own = getpgrp()
        for pid in descendants {
            let group = getpgid(pid)
            if group > 1, group != own, group != leader { _ = kill(-group, signal) }
            _ = kill(pid, signal)
        }
    }

    /// A readable name: `SIGKILL` for 9.
    public static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGHUP: "SIGHUP"
        case SIGINT: "SIGINT"
        case SIGQUIT: "SIGQUIT"
        case SIGILL: "SIGILL"
        case SIGABRT: "SIGABRT"
        case SIGFPE: "SIGFPE"
        case SIGKILL: "SIGKILL"
        case SIGSEGV: "SIGSEGV"
        case SIGPIPE: "SIGPIPE"
        case SIGALRM: "SIGALRM"
        case SIGTERM: "SIGTERM"
        case SIGUSR1: "SIGUSR1"
        case SIGUSR2: "SIGUSR2"
        case SIGBUS: "SIGBUS"
        case SIGTRAP: "SIGTRAP"
        default: "signal \(signal)"
        }
    }
}

/// The processes below one, read from `/proc` (Linux); empty where there is no `/proc`.
public enum ProcessTree {
    public static func descendants(of root: pid_t) -> [pid_t] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        var children: [pid_t: [pid_t]] = [:]
        for entry in entries {
            guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8) else { continue }
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses; the last `)` ends it.
            guard let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, let parent = pid_t(fields[1]) else { continue }
            children[parent, default: []].append(pid)
        }
        var found: [pid_t] = []
        var queue = children[root] ?? []
        while let pid = queue.popLast() {
            found.append(pid)
            queue += children[pid] ?? []
        }
        return found
    }
}

/// What the agent's standard output is cut into.
enum StdoutFraming: Sendable {
    /// Lines, a longer one cut at `LineSplitter`'s bound (headless agents: each line is an event).
    case lines
    /// JSON-RPC messages, one per line: a line over the bound is dropped whole, never cut (ACP).
    case messages(maxBytes: Int)

    var framer: BoundedLineFramer {
        switch self {
        case .lines: BoundedLineFramer(maxLineBytes: LineSplitter().maxLineBytes, overflow: .cut)
        case .messages(let maxBytes): BoundedLineFramer(maxLineBytes: maxBytes, overflow: .drop)
        }
    }
}

/// One piece of the agent's output.
enum AgentOutputLine: Sendable, Equatable {
    case line(String)
    /// A stdout line this long was dropped (`StdoutFraming.messages`).
    case overlong(Int)
}

/// Runs one agent: a child process in its own process group, in the workspace, with `input`
/// written to its stdin (the prompt, for most agents, then closed; an ACP agent's messages for as
/// long as the runtime lives), its stdout and stderr read line by line.
///
/// A stop request (a grace period) sends SIGTERM to the agent's group, then SIGKILL once the
/// grace has passed. When the agent itself has exited, whatever is left of its group (a
/// background job it started) is killed: nothing an execution started outlives it.
struct AgentProcess {
    var invocation: AgentInvocation
    var workingDirectory: String
    var environment: [String: String]
    var framing: StdoutFraming = .lines

    /// The invocation's standard input, written once and closed.
    static func input(_ text: String) -> AsyncStream<String> {
        AsyncStream { continuation in
            if !text.isEmpty { continuation.yield(text) }
            continuation.finish()
        }
    }

    /// Returns once the agent has exited and every line of its output has been delivered.
    func run(
        input: AsyncStream<String>,
        stopRequests: AsyncStream<Duration>,
        onStart: @escaping @Sendable (pid_t) async -> Void,
        onLine: @escaping @Sendable (AgentStream, AgentOutputLine) async -> Void
    ) async throws -> AgentTermination {
        var options = PlatformOptions()
        options.processGroupID = 0
        // If this task is cancelled while the agent runs, swift-subprocess tears it down.
        options.teardownSequence = [.gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: .seconds(1))]
        let merged = environment.merging(invocation.defaultEnvironment) { session, _ in session }
        let variables = Dictionary(
            merged.compactMap { name, value in Environment.Key(rawValue: name).map { ($0, value) } },
            uniquingKeysWith: { first, _ in first }
        )
        let framing = framing
        let result = try await Subprocess.run(
            .path(FilePath(invocation.executable)),
            arguments: Arguments(invocation.arguments),
            environment: .custom(variables),
            workingDirectory: FilePath(workingDirectory),
            platformOptions: options,
            input: .inputWriter,
            output: .sequence,
            error: .sequence
        ) { execution in
            let pid = execution.processIdentifier.value
            await onStart(pid)
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    await withTaskGroup(of: Void.self) { killers in
                        for await grace in stopRequests {
                            ProcessGroup.signalTree(pid, SIGTERM)
                            killers.addTask {
                                try? await Task.sleep(for: grace)
                                ProcessGroup.signalTree(pid, SIGKILL)
                            }
                        }
                        killers.cancelAll()
                    }
                }
                group.addTask {
                    // The agent may exit without reading its input: a failed write ends this.
                    // Cancelled once the agent has exited (its input may never end, for ACP).
                    let writer = execution.standardInputWriter
                    for await text in input {
                        guard (try? await writer.write(text)) != nil else { break }
                    }
                    try? await writer.finish()
                }
                await withTaskGroup(of: Void.self) { io in
                    io.addTask { await Self.forward(execution.standardOutput, as: .stdout, framing: framing, to: onLine) }
                    io.addTask { await Self.forward(execution.standardError, as: .stderr, framing: .lines, to: onLine) }
                }
                await Self.waitUntilExited(pid)
                group.cancelAll()
            }
            // The agent has exited but is not reaped yet, so its group id cannot be reused.
            ProcessGroup.signal(pid, SIGKILL)
        }
        switch result.terminationStatus {
        case .exited(let code): return .exited(code)
        case .signaled(let signal): return .signaled(signal)
        }
    }

    private static func forward(
        _ output: SubprocessOutputSequence,
        as stream: AgentStream,
        framing: StdoutFraming,
        to onLine: @Sendable (AgentStream, AgentOutputLine) async -> Void
    ) async {
        var framer = framing.framer
        func deliver(_ item: BoundedLineFramer.Item) async {
            switch item {
            case .line(let line): await onLine(stream, .line(line))
            case .overlong(let bytes): await onLine(stream, .overlong(bytes))
            }
        }
        do {
            for try await buffer in output {
                for item in framer.append(buffer.withUnsafeBytes { Array($0) }) { await deliver(item) }
            }
        } catch {
            // A read error ends this stream like EOF; the exit status still tells how it ended.
        }
        if let last = framer.finish() { await deliver(last) }
    }

    /// Waits until `pid` (a child of this process) has exited, without reaping it.
    private static func waitUntilExited(_ pid: pid_t) async {
        var delay = Duration.milliseconds(1)
        // Cancelled: swift-subprocess's teardown stops the agent; do not spin until it has.
        while !hasExited(pid), !Task.isCancelled {
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .milliseconds(50))
        }
    }

    private static func hasExited(_ pid: pid_t) -> Bool {
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == -1 {
            // ECHILD: it is no longer our child to wait for, so it is gone.
            if errno != EINTR { return true }
        }
        return info.si_signo != 0
    }
}
