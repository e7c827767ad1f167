/*
 * sample_clock: gives scsynth a clock that advances with the audio it has computed.
 *
 * Preloaded into scsynth only (see SCSYNTH_SHIM in renderer/server.py), in front of
 * libfaketime. scsynth places each timed event on its samples through a delay-locked
 * loop (SC_TimeDLL) fed with the wall clock read at the start of every JACK process
 * callback. On a busy or stalling machine those readings jitter by the callback's
 * wake-up latency, times the acceleration factor, and the loop turns the jitter into
 * drift: events land milliseconds off their beat. Here, the clock read inside scsynth's
 * JACK callbacks is the clock of the audio itself: ORIGIN + frames computed / rate.
 * The loop then sees a period of exactly frames / rate every time and holds the
 * nominal rate, whatever the wake-ups. The loop's resets (buffer-size, sample-rate and
 * xrun callbacks, and the one scsynth makes after activating its client) read the
 * time one period before the next callback, so a reset starts it on the same line
 * instead of ringing.
 *
 * Every other clock read, and every read outside those callbacks, goes to the next
 * clock_gettime (libfaketime's under acceleration, else libc's). Nothing here touches
 * the audio: scsynth computes every sample as it would.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

typedef uint32_t jack_nframes_t;
typedef struct jack_client jack_client_t;
typedef int (*frames_callback)(jack_nframes_t, void *);
typedef int (*plain_callback)(void *);

struct frames_slot { frames_callback callback; void *arg; };
struct plain_slot { plain_callback callback; void *arg; };

static struct frames_slot process_slot, buffer_size_slot, sample_rate_slot;
static struct plain_slot xrun_slot;

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int have_origin;
static int64_t origin_ns;      /* the clock at frame 0 */
static uint64_t frames_begun;  /* frames of every process callback begun so far */
static jack_nframes_t period;  /* frames per callback */
static jack_nframes_t rate;    /* frames per second */

/* The fixed reading the clock gives in this thread, or 0: pass through */
static __thread int64_t pinned_ns;
/* scsynth also resets its loop once in the thread that activated its JACK client, after
 * connecting its ports: that thread's next reading is a reset's. */
static __thread int reset_due;

/* The clock_gettime after this library's: libfaketime's under acceleration, else libc's */
static int next_clock_gettime(clockid_t clock, struct timespec *ts)
{
    static int (*next)(clockid_t, struct timespec *);
    if (!next)
        next = dlsym(RTLD_NEXT, "clock_gettime");
    return next(clock, ts);
}

static int64_t next_now_ns(void)
{
    struct timespec ts;
    next_clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int write_reading(int64_t reading_ns, struct timespec *ts)
{
    ts->tv_sec = reading_ns / 1000000000;
    ts->tv_nsec = reading_ns % 1000000000;
    return 0;
}

static int64_t frames_ns(uint64_t frames)
{
    return (int64_t)((__int128)frames * 1000000000 / (rate ? rate : 44100));
}

static int64_t reset_reading(jack_nframes_t frames);

int clock_gettime(clockid_t clock, struct timespec *ts)
{
    if (reset_due && clock == CLOCK_REALTIME) {
        reset_due = 0;
        return write_reading(reset_reading(period), ts);
    }
    if (pinned_ns && clock == CLOCK_REALTIME)
        return write_reading(pinned_ns, ts);
    return next_clock_gettime(clock, ts);
}

/* A reset reads the time one period of `frames` before the next callback begins. */
static int64_t reset_reading(jack_nframes_t frames)
{
    pthread_mutex_lock(&state_lock);
    if (!have_origin) {
        origin_ns = next_now_ns() + frames_ns(frames) - frames_ns(frames_begun);
        have_origin = 1;
    }
    int64_t reading = origin_ns + frames_ns(frames_begun) - frames_ns(frames);
    pthread_mutex_unlock(&state_lock);
    return reading;
}

static int on_process(jack_nframes_t frames, void *arg)
{
    pthread_mutex_lock(&state_lock);
    if (!have_origin) {
        origin_ns = next_now_ns();
        have_origin = 1;
    }
    pinned_ns = origin_ns + frames_ns(frames_begun);
    frames_begun += frames;
    period = frames;
    pthread_mutex_unlock(&state_lock);
    int result = process_slot.callback(frames, arg);
    pinned_ns = 0;
    return result;
}

static int on_buffer_size(jack_nframes_t frames, void *arg)
{
    period = frames;
    pinned_ns = reset_reading(frames);
    int result = buffer_size_slot.callback(frames, arg);
    pinned_ns = 0;
    return result;
}

static int on_sample_rate(jack_nframes_t frames_per_s, void *arg)
{
    pthread_mutex_lock(&state_lock);
    /* frames already computed keep their times: move the origin to the change */
    if (have_origin && rate && frames_per_s != rate) {
        origin_ns += frames_ns(frames_begun);
        frames_begun = 0;
    }
    rate = frames_per_s;
    pthread_mutex_unlock(&state_lock);
    pinned_ns = reset_reading(period);
    int result = sample_rate_slot.callback(frames_per_s, arg);
    pinned_ns = 0;
    return result;
}

static int on_xrun(void *arg)
{
    pinned_ns = reset_reading(period);
    int result = xrun_slot.callback(arg);
    pinned_ns = 0;
    return result;
}

static void *next_symbol(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

int jack_set_process_callback(jack_client_t *client, frames_callback callback, void *arg)
{
    int (*set)(jack_client_t *, frames_callback, void *) = next_symbol("jack_set_process_callback");
    jack_nframes_t (*get_rate)(jack_client_t *) = next_symbol("jack_get_sample_rate");
    jack_nframes_t (*get_period)(jack_client_t *) = next_symbol("jack_get_buffer_size");
    rate = get_rate(client);
    period = get_period(client);
    process_slot = (struct frames_slot){callback, arg};
    return set(client, callback ? on_process : callback, arg);
}

/* A JACK setter that registers `wrapper` in place of scsynth's callback, kept in `slot` */
#define WRAPPING_SETTER(setter, callback_type, slot, wrapper)                              \
    int setter(jack_client_t *client, callback_type callback, void *arg)                   \
    {                                                                                      \
        int (*set)(jack_client_t *, callback_type, void *) = next_symbol(#setter);         \
        slot.callback = callback;                                                          \
        slot.arg = arg;                                                                    \
        return set(client, callback ? wrapper : callback, arg);                            \
    }

WRAPPING_SETTER(jack_set_buffer_size_callback, frames_callback, buffer_size_slot, on_buffer_size)
WRAPPING_SETTER(jack_set_sample_rate_callback, frames_callback, sample_rate_slot, on_sample_rate)
WRAPPING_SETTER(jack_set_xrun_callback, plain_callback, xrun_slot, on_xrun)

int jack_activate(jack_client_t *client)
{
    int (*activate)(jack_client_t *) = next_symbol("jack_activate");
    int result = activate(client);
    reset_due = result == 0;
    return result;
}
