/*
 * console.c — COM1 output and input, and the formatted printing everything else uses.
 *
 * Every UART register access is a VM exit, so output is written in bursts: when the 16550's
 * FIFO is confirmed (IIR bits 7:6), one LSR read that shows the transmitter empty licenses 16
 * bytes; without a FIFO it licenses one. Nothing is dropped on a slow backend, and nothing is
 * polled per byte on a fast one.
 */
#include "probe.h"

#define COM1     0x3f8
#define UART_THR 0
#define UART_IER 1
#define UART_IIR 2
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5

static int tx_burst = 1; /* bytes we may write after seeing THRE */
static int tx_credit;

void console_init(void)
{
    outb(COM1 + UART_IER, 0);    /* polled: no UART interrupts */
    outb(COM1 + UART_FCR, 0x07); /* enable and clear FIFOs */
    if ((inb(COM1 + UART_IIR) & 0xc0) == 0xc0)
        tx_burst = 16;
    tx_credit = 0;
}

void con_putc(char c)
{
    if (tx_credit == 0) {
        for (int spin = 0; spin < 1000000; spin++) {
            u8 lsr = inb(COM1 + UART_LSR);
            if (lsr & 0x20)
                break;
            if (lsr == 0xff) /* no UART at all: do not wait */
                break;
            cpu_relax();
        }
        tx_credit = tx_burst;
    }
    outb(COM1 + UART_THR, (u8)c);
    tx_credit--;
}

void con_write(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        con_putc(s[i]);
}

void con_puts(const char *s)
{
    con_write(s, strlen(s));
}

int con_getc_nonblock(void)
{
    u8 lsr = inb(COM1 + UART_LSR);
    if (lsr == 0xff || !(lsr & 1))
        return -1;
    return inb(COM1 + UART_THR);
}

/* ---- formatting: %[-0][width][l|ll|z]{d,u,x,s,c,p,%} ---------------------------------------- */

struct sink {
    char *buf;
    size_t size, pos;
};

static void sink_put(struct sink *s, char c)
{
    if (s->buf) {
        if (s->pos + 1 < s->size)
            s->buf[s->pos] = c;
    } else {
        con_putc(c);
    }
    s->pos++;
}

static void sink_num(struct sink *s, u64 v, unsigned base, bool neg, int width, char pad)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (neg)
        tmp[n++] = '-';
    for (int i = n; i < width; i++)
        sink_put(s, pad);
    while (n)
        sink_put(s, tmp[--n]);
}

static void format(struct sink *s, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            sink_put(s, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, lng = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            lng++;
            fmt++;
        }
        switch (*fmt) {
        case 'd': {
            long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);
            sink_num(s, v < 0 ? (u64)-v : (u64)v, 10, v < 0, width, pad);
            break;
        }
        case 'u':
            sink_num(s, lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned), 10, false,
                     width, pad);
            break;
        case 'x':
            sink_num(s, lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned), 16, false,
                     width, pad);
            break;
        case 'p':
            sink_put(s, '0');
            sink_put(s, 'x');
            sink_num(s, (u64)va_arg(ap, void *), 16, false, width, pad);
            break;
        case 's': {
            const char *str = va_arg(ap, const char *);
            if (!str)
                str = "(null)";
            int len = (int)strlen(str);
            for (int i = len; i < width; i++)
                sink_put(s, ' ');
            while (*str)
                sink_put(s, *str++);
            break;
        }
        case 'c':
            sink_put(s, (char)va_arg(ap, int));
            break;
        case '%':
            sink_put(s, '%');
            break;
        default:
            sink_put(s, '%');
            if (*fmt)
                sink_put(s, *fmt);
            else
                fmt--;
        }
    }
}

int vsnprint(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink s = {buf, size, 0};
    format(&s, fmt, ap);
    if (size)
        buf[s.pos < size ? s.pos : size - 1] = 0;
    return (int)s.pos;
}

int snprint(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprint(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void con_vprintf(const char *fmt, va_list ap)
{
    struct sink s = {NULL, 0, 0};
    format(&s, fmt, ap);
}

void con_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    con_vprintf(fmt, ap);
    va_end(ap);
}

void info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    con_puts("PROBE info ");
    con_vprintf(fmt, ap);
    con_putc('\n');
    va_end(ap);
}

/* "PROBE result PREFIX.KEY=VALUE" (or "KEY=VALUE" without a prefix): one line, one number. */
void result(const char *prefix, const char *key, const char *value_fmt, ...)
{
    va_list ap;
    va_start(ap, value_fmt);
    con_puts("PROBE result ");
    if (prefix) {
        con_puts(prefix);
        con_putc('.');
    }
    con_puts(key);
    con_putc('=');
    con_vprintf(value_fmt, ap);
    con_putc('\n');
    va_end(ap);
}

void probe_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    con_puts("PROBE fail ");
    con_vprintf(fmt, ap);
    con_putc('\n');
    va_end(ap);
    power_off();
}
