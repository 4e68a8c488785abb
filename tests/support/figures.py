"""Figures drawn as a file would be, and where their legends sit."""



def _drawn(figure):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  FigureCanvasAgg(figure).draw()
  return figure


def _legends_below_their_panels(figure):
  renderer = figure.canvas.get_renderer()
  for axis in figure.axes:
    if axis.get_visible() and axis.get_legend() is not None:
      assert axis.get_legend().get_window_extent(renderer).y1 <= axis.get_window_extent(renderer).y0 + 1
