import Foundation
import Subprocess
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// How a command run by `CommandRunner` ended.
struct CommandOutcome: Sendable {
    /// The exit code; 128 + N for a process killed by signal N; 124 when it ran out of time;
    /// 127 when it could not be started.
    var exitCode: Int32
    var timedOut: Bool
    /// The end of its combined stdout and stderr.
    var output: OutputTail

    var succeeded: Bool { exitCode == 0 && !timedOut }
}

/// Runs a short-lived command (git, a setup command) to completion with a time limit, keeping
/// only the end of its output. The command gets its own session: at its time limit, and after it
/// exits, what is left of its process tree (identified by pid and start time, see `ProcessTree`)
/// is killed, so nothing it started in the background outlives it. swift-subprocess stops reading when the command exits, even if a leftover grandchild
/// still holds the pipe open.
enum CommandRunner {
    static func run(
        _ argv: [String],
        environment: [String: String],
        workingDirectory: URL?,
        timeout: Duration
    ) async -> CommandOutcome {
        await execute(
            argv, environment: environment, workingDirectory: workingDirectory, timeout: timeout,
            output: .sequence, error: .combinedWithOutput
        ) { $0.standardOutput }
    }

    /// Like `run`, with the command's standard output written to `standardOutput` (a file of the
    /// caller's, open for writing) and only its standard error kept in the outcome's tail.
    static func run(
        _ argv: [String],
        environment: [String: String],
        workingDirectory: URL?,
        timeout: Duration,
        standardOutput: FileDescriptor
    ) async -> CommandOutcome {
        await execute(
            argv, environment: environment, workingDirectory: workingDirectory, timeout: timeout,
            output: .fileDescriptor(standardOutput, closeAfterSpawningProcess: false), error: .sequence
        ) { $0.standardError }
    }

    private static func execute<Output: OutputProtocol, Error: ErrorOutputProtocol>(
        _ argv: [String],
        environment: [String: String],
        workingDirectory: URL?,
        timeout: Duration,
        output: Output,
        error: Error,
        tailOf stream: @escaping @Sendable (Execution<NoInput, Output, Error>) -> SubprocessOutputSequence
    ) async -> CommandOutcome {
        precondition(!argv.isEmpty, "a command needs an executable")
        let executable: Executable = argv[0].contains("/") ? .path(FilePath(argv[0])) : .name(argv[0])
        var options = PlatformOptions()
        options.createSession = true
        // When the caller's task is cancelled, take the whole group down.
        options.teardownSequence = [.send(signal: .kill, toProcessGroup: true, allowedDurationToNextStep: .milliseconds(200))]
        var keys: [Environment.Key: String] = [:]
        for (name, value) in environment {
            if let key = Environment.Key(rawValue: name) { keys[key] = value }
        }
        let watch = Watch()

        return await withTaskGroup(of: Void.self, returning: CommandOutcome.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                guard !Task.isCancelled else { return }
                let process = watch.state.withLock { state -> SpawnedProcess? in
                    state.timedOut = true
                    return state.process
                }
                if let process { ProcessControl.killTree(process) }
            }
            defer { group.cancelAll() }
            do {
                let result = try await Subprocess.run(
                    executable,
                    arguments: Arguments(Array(argv.dropFirst())),
                    environment: .custom(keys),
                    workingDirectory: workingDirectory.map { FilePath($0.path) },
                    platformOptions: options,
                    input: .none,
                    output: output,
                    error: error
                ) { execution in
                    let pid = execution.processIdentifier.value
                    // Not reaped before the body ends, so its start time can be read now.
                    let process = ProcStat.read(pid).map { SpawnedProcess(pid: pid, startTime: $0.startTime) }
                    let alreadyTimedOut = watch.state.withLock { state -> Bool in
                        state.process = process
                        return state.timedOut
                    }
                    if alreadyTimedOut, let process { ProcessControl.killTree(process) }
                    var tail = OutputTail()
                    for try await buffer in stream(execution) {
                        buffer.withUnsafeBytes { tail.append($0) }
                    }
                    return tail
                }
                let (process, timedOut) = watch.state.withLock { ($0.process, $0.timedOut) }
                // Leftover background processes of the command (its session) go with it.
                if let process { ProcessControl.killTree(process) }
                let exitCode: Int32
                switch result.terminationStatus {
                case .exited(let code): exitCode = code
                case .signaled(let signal): exitCode = 128 + signal
                }
                return CommandOutcome(
                    exitCode: timedOut ? SetupFailure.timeoutExitCode : exitCode,
                    timedOut: timedOut,
                    output: result.closureResult
                )
            } catch {
                var tail = OutputTail()
                tail.append("could not run \(argv[0]): \(error)")
                return CommandOutcome(exitCode: 127, timedOut: false, output: tail)
            }
        }
    }

    /// Shared by the run and its time limit: the command's pid once known, and whether the
    /// limit was reached (possibly before the pid was known).
    private final class Watch: Sendable {
        struct State {
            var process: SpawnedProcess?
            var timedOut = false
        }
        let state = Mutex(State())
    }
}
